"""The table of mount options: -o name=value means what --name value means."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from idcfs import options
from idcfs.options import BadOption, apply_o, parse_size


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_to(parser)
    return parser.parse_args(argv)


def test_o_options_are_the_long_options():
    by_flag = parse("--cache-size", "2G", "--max-connections", "8", "--umask", "027",
                    "--license", "CC BY 4.0", "--license", "CC0", "-f", "--ca-bundle", "/x.pem")
    by_o = parse()
    rest = apply_o(by_o, ["cache_size=2G", "max-connections=8", "umask=027",
                          "license=CC BY 4.0", "license=CC0", "foreground", "ca_bundle=/x.pem",
                          "allow_other", "fsname=idc"])
    assert vars(by_o) == vars(by_flag)
    assert by_o.cache_size == 2 << 30 and by_o.umask == 0o27 and by_o.ca_bundle == Path("/x.pem")
    assert rest == ["allow_other", "fsname=idc"]  # not idcfs's: for the FUSE checks


def test_the_command_line_wins_over_o():
    args = parse("--max-connections", "4")
    apply_o(args, ["max_connections=99", "debug=no"])
    assert args.max_connections == 4 and args.debug is False


@pytest.mark.parametrize("item,words", [
    ("max_connections=0", "must be more than 0"),
    ("cache_size=lots", "not a size"),
    ("source=azure", "must be one of aws, gcs"),
    ("endpoint_url", "needs a value"),
])
def test_a_bad_o_value_names_the_option(item, words):
    with pytest.raises(BadOption, match=words):
        apply_o(parse(), [item])


def test_defaults_are_written_once_in_the_table():
    from idcfs.config import MountConfig

    assert MountConfig.__dataclass_fields__["max_connections"].default == \
        options.default("max_connections") == 64
    assert MountConfig.__dataclass_fields__["request_timeout"].default == 60.0


@pytest.mark.parametrize("text,size", [("20G", 20 << 30), ("512M", 512 << 20), ("1.5T", 3 << 39),
                                       ("1048576", 1 << 20), ("64KiB", 64 << 10), ("8mb", 8 << 20)])
def test_sizes(text, size):
    assert parse_size(text) == size
