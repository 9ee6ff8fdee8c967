"""The `idcfs` command: mount, umount, status, cache.

Every check a person could fail (checks.py: a missing mountpoint, a bad index, a malformed URL)
happens before anything is started, and ends in one plain line and a non-zero exit. `idcfs mount`
without --foreground starts the daemon as a child and returns only once the mount answers (with
the daemon's warnings, such as an endpoint it cannot reach), or with the daemon's own error if it
could not mount.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from . import __version__, checks, options
from .checks import UsageError
from .config import MountConfig, default_cache_dir, mount_config
from .index.files import BadIndex, start_build
from .mounts import is_mounted
from .options import BadOption
from .index.selection import BadSelection


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


def _mount_background(cfg: MountConfig, argv: list[str]) -> int:
    """Start the daemon in its own session and wait until it says the mount is ready."""
    log_file = cfg.log_file or cfg.cache_dir / "idcfs.log"
    read_end, write_end = os.pipe()
    with open(log_file, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "idcfs", *argv, "--foreground", "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            pass_fds=(write_end,), start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        lines = ready.read().decode(errors="replace").strip().splitlines()
    warnings = [line for line in lines if line.startswith("warning: ")]
    message = "\n".join(line for line in lines if line not in warnings)
    for warning in warnings:
        print(f"idcfs: {warning}", file=sys.stderr)
    if message == "ready":
        return 0
    code = child.wait()
    print(f"idcfs: {message or f'the daemon exited with status {code}; see {log_file}'}",
          file=sys.stderr)
    return 1


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
        cfg = mount_config(args, checks.fuse_options(rest))
        if not cfg.foreground:
            return _mount_background(cfg, argv)
        build = start_build(cfg.index_dir, cfg.cache_dir, cfg.selection)
        from .daemon import run

        return run(cfg, ready_fd=args.ready_fd, build=build)
    except (UsageError, BadOption, BadIndex, BadSelection) as exc:
        _tell_starter(args, str(exc))
        print(f"idcfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        return 130
    except Exception as exc:  # the last resort: a person gets one line, --debug the traceback
        if getattr(args, "debug", False):
            raise
        first = (str(exc).splitlines() or [""])[0]
        message = f"unexpected error: {type(exc).__name__}: {first} (run with --debug for details)"
        _tell_starter(args, message)
        print(f"idcfs: {message}", file=sys.stderr)
        return 1


def _tell_starter(args: argparse.Namespace, message: str) -> None:
    """Pass a failure to the process waiting for the daemon to be ready, if it still waits: once
    the daemon has said "ready" the pipe is closed, and a later failure is only logged."""
    fd = getattr(args, "ready_fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, message.encode())
