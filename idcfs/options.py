"""The mount options, once: name, type, default, help. The argument parser, `-o name=value`
parsing, MountConfig's defaults and the README's table of options all come from OPTIONS.

    python -m idcfs.options     # prints the README's table
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .index.layout import PRESETS

GCS_ENDPOINT = "https://storage.googleapis.com"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/idcfs, else ~/.cache/idcfs, as every desktop tool expects."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "idcfs"


def parse_size(text: str) -> int:
    """Bytes from a size such as 20G, 512M, 1.5T or 1048576 (binary units, B/iB optional)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = _UNITS.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in _UNITS else value
    try:
        size = float(number) * unit
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 20G, 512M)") from None
    if size < 0:
        raise ValueError(f"not a size: {text!r}")
    return int(size)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mask: {text!r} (e.g. 027)") from None


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


@dataclass(frozen=True)
class Option:
    """One option of `idcfs mount`: `--name` on the command line, `-o name_with_underscores=`
    as a mount option, and the MountConfig field of that name (where the mount keeps it)."""

    name: str
    help: str
    parse: Callable[[str], Any] | None = str  # None: a flag, on or off
    default: Any = None  # None: decided at mount (the help says how)
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    repeat: bool = False  # may be given several times; the values make a list
    short: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flags(self) -> list[str]:
        return [f for f in (self.short, f"--{self.name}") if f]


OPTIONS: tuple[Option, ...] = (
    Option("index", "a directory holding idc_index.parquet (default: the installed "
           "idc-index-data package)", Path, metavar="DIR"),
    Option("endpoint-url", "send every request to this S3-compatible endpoint (default: AWS S3, "
           f"us-east-1; with --source gcs, {GCS_ENDPOINT})", metavar="URL"),
    Option("source", "read IDC's AWS buckets (aws) or its GCS buckets (gcs, through GCS's "
           "S3-compatible API)", default="aws", choices=("aws", "gcs"), metavar="aws|gcs"),
    Option("ca-bundle", "trust only the CA certificates in this PEM file (default: the system's "
           "certificate store; AWS_CA_BUNDLE does the same)", Path, metavar="FILE"),
    Option("idc-version", "show exactly the data of IDC release N (default: the newest release "
           "the index knows)", int, metavar="N"),
    Option("collection", "show only these collections (comma-separated collection_ids)",
           metavar="ID,..."),
    Option("license", "show only series under this license_short_name (repeatable), e.g. "
           "'CC BY 4.0'", repeat=True, metavar="NAME"),
    Option("exclude-license", "leave out series under this license_short_name (repeatable), "
           "e.g. 'CC BY-NC 4.0'", repeat=True, metavar="NAME"),
    Option("manifest", "show only the series of a manifest: the IDC portal's s5cmd manifests "
           "(AWS or GCS URLs) or a list of SeriesInstanceUIDs or crdc_series_uuids, one a line",
           Path, metavar="FILE"),
    Option("filter", "show only series for which this SQL condition over the index's columns "
           "holds, e.g. \"collection_id='nlst' AND Modality='CT'\"", metavar="SQL"),
    Option("layout", "the directory layout: a template of %column placeholders, levels split "
           f"by /, or a preset ({', '.join(PRESETS)}); default: idc-index's download layout",
           default="default", metavar="TEMPLATE"),
    Option("cache-dir", "where blocks, series listings and built index trees are kept "
           "(default: ~/.cache/idcfs, or $XDG_CACHE_HOME/idcfs); created private (0700)",
           Path, metavar="DIR"),
    Option("cache-size", "bound of the disk cache, e.g. 20G (default: a quarter of the free "
           "space of the cache's disk)", _size, metavar="SIZE"),
    Option("memory-cache-size", "bound of the in-memory block cache", _size, default=96 << 20,
           metavar="SIZE"),
    Option("max-connections", "connections to the object store at most", _positive(int),
           default=64, metavar="N"),
    Option("request-timeout", "a read or listing the object store has not answered by then "
           "(retries included) fails with EIO instead of hanging", _positive(float),
           default=60.0, metavar="SECONDS"),
    Option("uid", "owner of every entry (default: the mounting user)", int, metavar="UID"),
    Option("gid", "group of every entry (default: the mounting user's)", int, metavar="GID"),
    Option("umask", "octal mask taken from the modes 0555 and 0444, e.g. 027", _octal,
           default=0, metavar="MASK"),
    Option("foreground", "stay in the foreground and log to stderr", None, short="-f"),
    Option("debug", "log everything (the same as --log-level DEBUG)", None),
    Option("log-level", "how much to log: DEBUG, INFO, WARNING or ERROR", str.upper,
           default="INFO", choices=LOG_LEVELS, metavar="LEVEL"),
    Option("log-file", "the background daemon's log (default: idcfs.log in the cache "
           "directory)", Path, metavar="FILE"),
)

BY_DEST = {option.dest: option for option in OPTIONS}


def default(name: str) -> Any:
    """An option's default, by its MountConfig name (max_connections)."""
    return BY_DEST[name].default


def _help(option: Option) -> str:
    shown = option.default
    if shown is None or option.parse is None or option.dest == "layout":
        text = option.help
    elif option.parse is _size:
        text = f"{option.help} (default: {shown >> 20}M)"
    elif option.parse is _octal:
        text = f"{option.help} (default: {shown:o})"
    else:
        text = f"{option.help} (default: {shown:g})" if isinstance(shown, float) \
            else f"{option.help} (default: {shown})"
    return text.replace("%", "%%")


def add_to(parser: argparse.ArgumentParser) -> None:
    """The options as arguments of parser. Nothing given is None, so that -o values fill in
    what the command line left out and defaults come last."""
    for option in OPTIONS:
        if option.parse is None:
            parser.add_argument(*option.flags, dest=option.dest, action="store_true",
                                default=None, help=_help(option))
        else:
            parser.add_argument(*option.flags, dest=option.dest, type=option.parse,
                                metavar=option.metavar, choices=option.choices,
                                action="append" if option.repeat else "store", help=_help(option))


class BadOption(ValueError):
    """A -o option that is unknown or whose value is not right; the message says which."""


def apply_o(args: argparse.Namespace, items: list[str]) -> list[str]:
    """Fold `-o name=value,...` into args where the command line left the option out; the
    items that are not idcfs options, for the caller to judge (FUSE's own, mount(8)'s)."""
    rest = []
    given = {dest for dest in BY_DEST if getattr(args, dest) is not None}
    for item in items:
        name, has_value, value = item.partition("=")
        option = BY_DEST.get(name.replace("-", "_"))
        if option is None:
            rest.append(item)
            continue
        if option.dest in given:
            continue  # the command line wins
        if option.parse is None:
            setattr(args, option.dest,
                    value.lower() not in ("0", "false", "no", "off") if has_value else True)
            continue
        if not has_value:
            raise BadOption(f"mount option {name} needs a value ({name}=...)")
        try:
            converted = option.parse(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise BadOption(f"bad value for mount option {name}: {value!r} ({exc})") from None
        if option.choices and converted not in option.choices:
            raise BadOption(f"mount option {name} must be one of {', '.join(option.choices)}")
        if option.repeat:
            setattr(args, option.dest, [*(getattr(args, option.dest) or []), converted])
        else:
            setattr(args, option.dest, converted)
    return rest


def markdown_table() -> str:
    """The README's table of options."""
    lines = ["| option | meaning |", "| --- | --- |"]
    for option in OPTIONS:
        left = "`" + ", ".join(
            f"{flag} {option.metavar}" if option.metavar and flag.startswith("--") else flag
            for flag in option.flags).replace("|", "\\|") + "`"
        meaning = _help(option).replace("%%", "%").replace("|", "\\|")
        lines.append(f"| {left} | {meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
