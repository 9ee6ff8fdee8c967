"""The `idcfs` command: mount, umount, status, cache.

Every check a person could fail (checks.py: a missing mountpoint, a bad index, a malformed URL)
happens before anything is served, and ends in one plain line and a non-zero exit. `idcfs mount`
without --foreground forks the daemon right after parsing its command line, so that the checks,
the imports and the mount happen once, in the daemon, instead of in two interpreters one after
the other; the command returns only once the mount answers (with the daemon's notes and
warnings, such as an endpoint it cannot reach), or with the daemon's own error if it could not
mount. Until then it imports nothing heavy: nothing is done twice.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

from . import __version__, checks, options
from .checks import UsageError
from .mounts import is_mounted
from .options import BadOption, default_cache_dir


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (the usage is one --help away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"idcfs: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="idcfs",
        description="Mount the NCI Imaging Data Commons as a read-only filesystem of DICOM files.",
    )
    parser.add_argument("--version", action="version", version=f"idcfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    mount = sub.add_parser(
        "mount",
        help="mount IDC at MOUNTPOINT",
        description="Mount IDC as collection/patient/study/series/*.dcm at MOUNTPOINT. Returns "
        "once the mount is ready; the daemon stays in the background unless --foreground.",
    )
    mount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="an empty directory")
    options.add_to(mount)
    mount.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPT[=VAL],...",
        help="mount options: any long option above as name=value (e.g. -o endpoint_url=URL), "
        "and FUSE options such as allow_other",
    )
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    umount = sub.add_parser("umount", help="unmount an idcfs mount",
                            description="Unmount MOUNTPOINT.")
    umount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")

    sub.add_parser("status", help="list the idcfs mounts with their version, cache use and health",
                   description="List the idcfs mounts of this machine with the IDC version they "
                   "show, their disk cache use, their health (answering, stale, hung) and their "
                   "endpoint's.")

    cache = sub.add_parser("cache", help="inspect, clear or warm the cache",
                           description="Inspect, clear or warm the cache.")
    cache_sub = cache.add_subparsers(dest="action", required=True, metavar="ACTION",
                                     parser_class=_Parser)
    for name, text in (("stats", "what the cache holds and how much"),
                       ("clear", "remove cached blocks and listings")):
        action = cache_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("--cache-dir", type=Path, metavar="DIR",
                            help=f"the cache directory (default: {default_cache_dir()})")
    warm = cache_sub.add_parser(
        "warm", help="read subtrees of a mount into the cache, with progress",
        description="Read every file under each PATH (inside an idcfs mount) once, so that later "
        "reads come from the cache.")
    warm.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    warm.add_argument("-j", "--jobs", type=int, default=16, metavar="N",
                      help="files read at once (default: 16)")
    return parser


def _mount_background(args: argparse.Namespace, fuse: set[str]) -> int:
    """Fork the daemon into its own session and wait until it says the mount is ready.

    Nothing but the command line has been read when it forks, and no thread runs yet."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        return _daemon(args, fuse, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        lines = ready.read().decode(errors="replace").strip().splitlines()
    said = [line for line in lines if line.startswith(("warning: ", "note: "))]
    message = "\n".join(line for line in lines if line not in said)
    for line in said:
        print(f"idcfs: {line}", file=sys.stderr)
    if message == "ready":
        return 0
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    log_file = _log_file(args.log_file, args.cache_dir or default_cache_dir())
    print(f"idcfs: {message or f'the daemon exited with status {code}; see {log_file}'}",
          file=sys.stderr)
    return 1


def _daemon(args: argparse.Namespace, fuse: set[str], ready_fd: int) -> int:
    """The forked daemon: its own session, no terminal; its output goes to the log file once the
    checks have said where that is (a failed check reaches the person through ready_fd)."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    args.ready_fd = ready_fd
    return _mount(args, fuse, background=True)


def _mount(args: argparse.Namespace, fuse: set[str], background: bool = False) -> int:
    """Check the options, then mount and serve in this process until unmounted."""
    from .config import mount_config
    from .index.files import start_build

    cfg = mount_config(args, fuse)
    if background:
        _log_to(_log_file(cfg.log_file, cfg.cache_dir))
    if cfg.notice and not _tell_starter(args, f"note: {cfg.notice}\n"):
        print(f"idcfs: note: {cfg.notice}", file=sys.stderr)
    build = start_build(cfg.index_dir, cfg.cache_dir, cfg.selection)
    from .daemon import run

    return run(cfg, ready_fd=args.ready_fd, build=build)


def _log_file(given: Path | None, cache_dir: Path) -> Path:
    """Where the background daemon logs: --log-file, else idcfs.log in the cache directory."""
    return given or cache_dir / "idcfs.log"


def _log_to(log_file: Path) -> None:
    """Send this process's stdout and stderr to the end of the log file."""
    try:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write the log file {log_file}: {exc.strerror}") from None
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def umount(mountpoint: Path) -> int:
    """Unmount, including a stale mount left by a daemon that was killed."""
    path = os.path.abspath(mountpoint)
    if not is_mounted(Path(path)):
        print(f"idcfs: {path} is not mounted", file=sys.stderr)
        return 1
    proc = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unknown error"
        print(f"idcfs: cannot unmount {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def mount_helper(argv: list[str] | None = None) -> int:
    """`mount.fuse.idcfs SOURCE MOUNTPOINT [-o OPTIONS] [-fnsv]`: what mount(8) and fstab call.

    The source field is ignored (IDC is the source; write `idcfs` there). `-f` (fake) does
    nothing; `-n`, `-s` and `-v` have no meaning here. Every option goes to `idcfs mount -o`.
    """
    argv = sys.argv[1:] if argv is None else argv
    positional, options = [], []
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            options.append(next(args, ""))
        elif arg.startswith("-o"):
            options.append(arg[2:])
        elif arg == "-t":
            next(args, None)
        elif arg == "-f":
            return 0
        elif arg in ("-n", "-s", "-v"):
            continue
        else:
            positional.append(arg)
    if len(positional) != 2:
        print("usage: mount.fuse.idcfs idcfs MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 1
    return main(["mount", positional[1], *(["-o", ",".join(options)] if options else [])])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "umount":
            return umount(args.mountpoint)
        if args.command == "status":
            from . import status

            return status.run()
        if args.command == "cache":
            from . import cachecmd

            return cachecmd.run(args)
        rest = options.apply_o(args, [i for o in args.options for i in o.split(",") if i])
        fuse = checks.fuse_options(rest)
        if args.foreground:
            return _mount(args, fuse)
        return _mount_background(args, fuse)
    except (UsageError, BadOption) as exc:
        _tell_starter(args, str(exc))
        print(f"idcfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        return 130
    except Exception as exc:  # the last resort: a person gets one line, --debug the traceback
        if getattr(args, "debug", False):
            _tell_starter(args, traceback.format_exc())
            raise
        first = (str(exc).splitlines() or [""])[0]
        message = f"unexpected error: {type(exc).__name__}: {first} (run with --debug for details)"
        _tell_starter(args, message)
        print(f"idcfs: {message}", file=sys.stderr)
        return 1


def _tell_starter(args: argparse.Namespace, message: str) -> bool:
    """Pass a message to the process waiting for the daemon to be ready, if it still waits (once
    the daemon has said "ready" the pipe is closed, and a later failure is only logged); whether
    it was passed."""
    fd = getattr(args, "ready_fd", None)
    if fd is None:
        return False
    with contextlib.suppress(OSError):
        os.write(fd, message.encode())
        return True
    return False
