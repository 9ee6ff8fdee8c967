"""The `idcfs` command: option parsing, up-front checks with one-line errors, mount and umount.

Every check a person could fail (a missing mountpoint, a bad index, a malformed URL) happens here,
before anything is started, and ends in one plain line and a non-zero exit. `idcfs mount` without
--foreground starts the daemon as a child and returns only once the mount answers, or with the
daemon's own error if it could not mount.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from . import __version__
from .config import MountConfig, default_cache_dir, default_cache_size, parse_size
from .index import BadIndex, check_index_dir, default_index_dir, start_build
from .layout import PRESETS
from .mounts import is_mounted
from .selection import BadSelection, Selection, known_versions
from .selection import check as check_selection

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
GCS_ENDPOINT = "https://storage.googleapis.com"
FUSE_CONF = "/etc/fuse.conf"

# FUSE and mount(8) options handed to the kernel as they are.
FUSE_OPTIONS = {
    "allow_other", "allow_root", "auto_unmount", "default_permissions", "ro", "nosuid", "suid",
    "nodev", "dev", "noexec", "exec", "noatime", "atime", "relatime", "strictatime", "nodiratime",
    "sync", "async", "dirsync",
}
FUSE_VALUED_OPTIONS = {"fsname", "subtype", "max_read"}
# mount(8) and fstab options that mean something to mount or systemd, not to the filesystem.
IGNORED_OPTIONS = {"defaults", "noauto", "auto", "_netdev", "nofail", "user", "users", "nouser"}


class UsageError(Exception):
    """Bad input from the person at the keyboard; the message is all they need to see."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (the usage is one --help away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"idcfs: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    mount.add_argument(
        "--index", type=Path, metavar="DIR",
        help="directory holding idc_index.parquet (default: the installed idc-index-data)",
    )
    mount.add_argument(
        "--endpoint-url", metavar="URL",
        help="S3-compatible endpoint for every request (default: AWS S3, us-east-1; with "
        f"--source gcs, {GCS_ENDPOINT})",
    )
    mount.add_argument(
        "--ca-bundle", type=Path, metavar="FILE",
        help="trust only the CA certificates in this PEM file (default: the system's store; "
        "AWS_CA_BUNDLE in the environment does the same)",
    )
    mount.add_argument(
        "--idc-version", type=int, metavar="N",
        help="show exactly the data of IDC release N (default: the newest the index knows)",
    )
    mount.add_argument(
        "--source", choices=("aws", "gcs"), metavar="CLOUD",
        help="aws (default) or gcs: which cloud's buckets to read",
    )
    mount.add_argument(
        "--collection", metavar="ID,...",
        help="show only these collections (comma-separated collection_ids)",
    )
    mount.add_argument(
        "--license", action="append", metavar="NAME",
        help="show only series under this license_short_name (repeatable), e.g. 'CC BY 4.0'",
    )
    mount.add_argument(
        "--exclude-license", action="append", metavar="NAME",
        help="leave out series under this license_short_name (repeatable), e.g. 'CC BY-NC 4.0'",
    )
    mount.add_argument(
        "--layout", metavar="TEMPLATE",
        help="directory layout: a template of %%column placeholders and separators, levels "
        "split by /, or a preset: " + ", ".join(PRESETS) + " (default: idc-index's, "
        + PRESETS["default"].replace("%", "%%") + ")",
    )
    mount.add_argument(
        "--manifest", type=Path, metavar="FILE",
        help="show only the series of this manifest: the IDC portal's s5cmd manifests (AWS or GCS "
        "URLs) or a list of SeriesInstanceUIDs or crdc_series_uuids, one a line",
    )
    mount.add_argument(
        "--filter", metavar="SQL",
        help="show only series for which this SQL condition over the index's columns holds, "
        "e.g. \"collection_id='nlst' AND Modality='CT'\"",
    )
    mount.add_argument(
        "--cache-dir", type=Path, metavar="DIR",
        help=f"where the index tree and series listings are kept (default: {default_cache_dir()})",
    )
    mount.add_argument(
        "--cache-size", type=_size, metavar="SIZE",
        help="bound of the disk cache, e.g. 20G (default: a quarter of the free space)",
    )
    mount.add_argument(
        "--memory-cache-size", type=_size, metavar="SIZE",
        help="bound of the in-memory block cache (default: 96M)",
    )
    mount.add_argument(
        "--max-connections", type=int, metavar="N",
        help="connections to the object store at most (default: 64)",
    )
    mount.add_argument(
        "--request-timeout", type=float, metavar="SECONDS",
        help="a read or listing that the object store has not answered by then fails with EIO "
        "(default: 60)",
    )
    mount.add_argument(
        "--uid", type=int, metavar="UID", help="owner of every file (default: the mounting user)")
    mount.add_argument(
        "--gid", type=int, metavar="GID", help="group of every file (default: the mounting user's)")
    mount.add_argument(
        "--umask", type=lambda text: int(text, 8), metavar="MASK",
        help="octal mask taken from the modes 0555/0444, e.g. 027 (default: 0)")
    mount.add_argument(
        "-f", "--foreground", action="store_true", default=None,
        help="stay in the foreground, logging to stderr",
    )
    mount.add_argument(
        "--debug", action="store_true", default=None, help="log everything (same as --log-level DEBUG)"
    )
    mount.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default: INFO)",
    )
    mount.add_argument(
        "--log-file", type=Path, metavar="FILE",
        help="log file of a background daemon (default: idcfs.log in the cache directory)",
    )
    mount.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPT[=VAL],...",
        help="mount options: any long option above as name=value (e.g. -o endpoint_url=URL), "
        "and FUSE options such as allow_other",
    )
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    umount = sub.add_parser("umount", help="unmount an idcfs mount", description="Unmount MOUNTPOINT.")
    umount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")

    sub.add_parser("status", help="list the idcfs mounts with their version, cache use and health",
                   description="List the idcfs mounts of this machine with the IDC version they "
                   "show, their disk cache use and their health (answering, stale, hung).")

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


def _apply_o_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> set[str]:
    """Fold `-o name=value` into args (explicit flags win); return the FUSE options."""
    mount_parser = parser._subparsers._group_actions[0].choices["mount"]  # noqa: SLF001
    actions = {a.dest: a for a in mount_parser._actions if a.option_strings}  # noqa: SLF001
    fuse: set[str] = set()
    for item in ",".join(args.options).split(","):
        if not item:
            continue
        name, has_value, value = item.partition("=")
        key = name.replace("-", "_")
        if key in ("options", "ready_fd", "help") or key.startswith("x-"):
            continue
        if key in actions:
            action = actions[key]
            if getattr(args, key) is not None:
                continue
            if isinstance(action, argparse._AppendAction) and has_value:  # noqa: SLF001
                setattr(args, key, [*(getattr(args, key) or []), value])
                continue
            if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
                setattr(args, key, value.lower() not in ("0", "false", "no") if has_value else True)
            elif not has_value:
                raise UsageError(f"mount option {name} needs a value ({name}=...)")
            else:
                try:
                    converted = action.type(value) if action.type else value
                except (TypeError, ValueError) as exc:
                    raise UsageError(f"bad value for mount option {name}: {value!r}") from exc
                if action.choices and converted not in action.choices:
                    raise UsageError(f"mount option {name} must be one of {', '.join(action.choices)}")
                setattr(args, key, converted)
        elif key in FUSE_OPTIONS and not has_value or key in FUSE_VALUED_OPTIONS and has_value:
            fuse.add(item)
        elif key == "rw":
            raise UsageError("idcfs is read-only: the mount option rw cannot be honoured")
        elif key in IGNORED_OPTIONS:
            continue
        else:
            raise UsageError(f"unknown mount option: {name}")
    return fuse


def _check_endpoint(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or " " in url:
        raise UsageError(f"malformed endpoint URL {url!r}: expected http(s)://host[:port]")
    try:
        parsed.port
    except ValueError as exc:
        raise UsageError(f"malformed endpoint URL {url!r}: bad port") from exc
    return url


def _check_ca_bundle(path: Path | None) -> str | None:
    """The CA bundle to trust instead of the system's store: --ca-bundle, else AWS_CA_BUNDLE (as
    every AWS tool reads it), else None. A file that holds no certificate is refused here."""
    origin = "--ca-bundle"
    if path is None and os.environ.get("AWS_CA_BUNDLE"):
        path, origin = Path(os.environ["AWS_CA_BUNDLE"]), "AWS_CA_BUNDLE"
    if path is None:
        return None
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise UsageError(f"{origin} {path} does not exist") from None
    except ssl.SSLError:  # an OSError too: first
        raise UsageError(f"{origin} {path} holds no PEM certificate") from None
    except OSError as exc:
        raise UsageError(f"cannot read {origin} {path}: {exc.strerror}") from None
    return str(path.resolve())


def _stale(path: Path) -> UsageError:
    return UsageError(
        f"{path} is a stale mount of a daemon that died; clear it with: idcfs umount {path}"
    )


def _check_mountpoint(path: Path) -> Path:
    try:
        st = path.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"mountpoint {path} is not a directory")
        entries = os.listdir(path)
    except FileNotFoundError:
        raise UsageError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise _stale(path) from None
        raise UsageError(f"cannot use mountpoint {path}: {exc.strerror}") from None
    if is_mounted(path):
        raise UsageError(f"{path} is already a mount point; unmount it first")
    if entries:
        raise UsageError(f"mountpoint {path} is not empty")
    return path.resolve()


def _check_fuse() -> None:
    try:
        if not stat.S_ISCHR(os.stat("/dev/fuse").st_mode):
            raise UsageError("/dev/fuse is not the FUSE device; is the fuse module loaded?")
    except FileNotFoundError:
        raise UsageError("no /dev/fuse: FUSE is not available (load the fuse module)") from None
    if shutil.which("fusermount3") is None:
        raise UsageError("fusermount3 not found: install the fuse3 package")


def _check_allow_other(fuse_options: set[str]) -> None:
    """allow_other needs root, or `user_allow_other` in /etc/fuse.conf; say so before mounting."""
    if "allow_other" not in fuse_options or os.getuid() == 0:
        return
    try:
        with open(FUSE_CONF) as conf:
            allowed = any(line.split("#", 1)[0].strip() == "user_allow_other" for line in conf)
    except OSError:
        allowed = False
    if not allowed:
        raise UsageError("allow_other needs 'user_allow_other' in /etc/fuse.conf "
                         "(as root: echo user_allow_other >> /etc/fuse.conf)")


def _prepare_cache_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise UsageError(f"cannot use cache directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"cache directory {path} is not writable")
    return path.resolve()


def mount_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MountConfig:
    """Check everything a person could get wrong and settle the options of the mount."""
    fuse = _apply_o_options(args, parser)
    _check_fuse()
    _check_allow_other(fuse)
    mountpoint = _check_mountpoint(args.mountpoint)
    index_dir = args.index or default_index_dir()
    check_index_dir(index_dir)
    source = args.source or "aws"
    endpoint = (_check_endpoint(args.endpoint_url) if args.endpoint_url
                else GCS_ENDPOINT if source == "gcs" else None)
    chosen = Selection(
        idc_version=(args.idc_version if args.idc_version is not None
                     else max(known_versions(index_dir), default=None)),
        source=source,
        collections=tuple(c for c in (args.collection or "").split(",") if c),
        licenses=tuple(args.license or ()),
        exclude_licenses=tuple(args.exclude_license or ()),
        filter=args.filter,
        manifest=str(args.manifest.resolve()) if args.manifest else None,
        layout=args.layout or "default",
        manifest_sha256=(hashlib.sha256(args.manifest.read_bytes()).hexdigest()
                         if args.manifest and args.manifest.is_file() else None),
    )
    notice = check_selection(index_dir, chosen)
    if notice and args.ready_fd is None:
        print(f"idcfs: note: {notice}", file=sys.stderr)
    if args.max_connections is not None and args.max_connections < 1:
        raise UsageError("--max-connections must be at least 1")
    level = "DEBUG" if args.debug else (args.log_level or "INFO")
    cache_dir = _prepare_cache_dir(args.cache_dir or default_cache_dir())
    cache_size = args.cache_size if args.cache_size is not None else default_cache_size(cache_dir)
    return MountConfig(
        mountpoint=mountpoint,
        index_dir=index_dir.resolve(),
        cache_dir=cache_dir,
        endpoint_url=endpoint,
        ca_bundle=_check_ca_bundle(args.ca_bundle),
        foreground=bool(args.foreground),
        log_level=level,
        log_file=args.log_file.resolve() if args.log_file else None,
        max_connections=args.max_connections or 64,
        request_timeout=args.request_timeout or 60.0,
        uid=args.uid if args.uid is not None else os.getuid(),
        gid=args.gid if args.gid is not None else os.getgid(),
        umask=args.umask or 0,
        cache_size=cache_size,
        memory_cache_size=args.memory_cache_size or MountConfig.memory_cache_size,
        fuse_options=frozenset(fuse),
        selection=chosen,
    )


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
        cfg = mount_config(args, parser)
        if not cfg.foreground:
            return _mount_background(cfg, argv)
        build = start_build(cfg.index_dir, cfg.cache_dir, cfg.selection)
        from .daemon import run

        return run(cfg, ready_fd=args.ready_fd, build=build)
    except (UsageError, BadIndex, BadSelection) as exc:
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
