"""The up-front checks of `idcfs mount`: everything a person could get wrong, found before
anything starts, each ending in one plain line (a UsageError) that says what to do."""

from __future__ import annotations

import errno
import os
import shutil
import ssl
import stat
from pathlib import Path
from urllib.parse import urlparse

from .mounts import is_mounted

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


def fuse_options(items: list[str]) -> set[str]:
    """The -o items that are not idcfs's own: FUSE's and mount(8)'s (checked, and kept for the
    kernel where they are FUSE's)."""
    fuse: set[str] = set()
    for item in items:
        name, has_value, _ = item.partition("=")
        key = name.replace("-", "_")
        if not item or key in ("options", "ready_fd", "help") or key.startswith("x-"):
            continue
        if key in FUSE_OPTIONS and not has_value or key in FUSE_VALUED_OPTIONS and has_value:
            fuse.add(item)
        elif key == "rw":
            raise UsageError("idcfs is read-only: the mount option rw cannot be honoured")
        elif key not in IGNORED_OPTIONS:
            raise UsageError(f"unknown mount option: {name}")
    return fuse


def endpoint_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or " " in url:
        raise UsageError(f"malformed endpoint URL {url!r}: expected http(s)://host[:port]")
    try:
        _ = parsed.port
    except ValueError as exc:
        raise UsageError(f"malformed endpoint URL {url!r}: bad port") from exc
    return url


def ca_bundle(path: Path | None) -> str | None:
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


def stale(path: Path) -> UsageError:
    return UsageError(
        f"{path} is a stale mount of a daemon that died; clear it with: idcfs umount {path}"
    )


def mountpoint(path: Path) -> Path:
    try:
        st = path.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"mountpoint {path} is not a directory")
        entries = os.listdir(path)
    except FileNotFoundError:
        raise UsageError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise stale(path) from None
        raise UsageError(f"cannot use mountpoint {path}: {exc.strerror}") from None
    if is_mounted(path):
        raise UsageError(f"{path} is already a mount point; unmount it first")
    if entries:
        raise UsageError(f"mountpoint {path} is not empty")
    return path.resolve()


def fuse() -> None:
    try:
        if not stat.S_ISCHR(os.stat("/dev/fuse").st_mode):
            raise UsageError("/dev/fuse is not the FUSE device; is the fuse module loaded?")
    except FileNotFoundError:
        raise UsageError("no /dev/fuse: FUSE is not available (load the fuse module)") from None
    if shutil.which("fusermount3") is None:
        raise UsageError("fusermount3 not found: install the fuse3 package")


def allow_other(options: set[str]) -> None:
    """allow_other needs root, or `user_allow_other` in /etc/fuse.conf; say so before mounting."""
    if "allow_other" not in options or os.getuid() == 0:
        return
    try:
        with open(FUSE_CONF) as conf:
            allowed = any(line.split("#", 1)[0].strip() == "user_allow_other" for line in conf)
    except OSError:
        allowed = False
    if not allowed:
        raise UsageError("allow_other needs 'user_allow_other' in /etc/fuse.conf "
                         "(as root: echo user_allow_other >> /etc/fuse.conf)")


def cache_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise UsageError(f"cannot use cache directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"cache directory {path} is not writable")
    return path.resolve()
