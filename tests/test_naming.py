"""The reversible escaping of index values into file names."""

from __future__ import annotations

import pytest

from idcfs.index.naming import decode, encode


@pytest.mark.parametrize("value", ["nlst", "ZZ RIDER MR8 1", "GBM_DSC_MRI_DRO_Bo=15T",
                                   "1.2.840.113654.2.55.1", "CT_1.2.3", "ümlaut", "a..b", "..."])
def test_safe_values_are_names_unchanged(value):
    assert encode(value) == value
    assert decode(value) == value


@pytest.mark.parametrize("value,name", [
    ("a/b", "a%2Fb"), ("", "%"), (".", "%2E"), ("..", "%2E%2E"), ("50%", "50%25"),
    ("nul\x00here", "nul%00here"), ("%2F", "%252F"), ("/", "%2F"),
])
def test_unsafe_values_are_escaped_and_decode_back(value, name):
    assert encode(value) == name
    assert decode(name) == value
    assert decode(name.encode()) == value


@pytest.mark.parametrize("name", ["%41", "%zz", "%2f", "a%", "%2", "%2E%2E%2E"])
def test_names_that_no_value_encodes_to_decode_to_none(name):
    assert decode(name) is None


def test_invalid_utf8_names_decode_to_none():
    assert decode(b"\xff\xfe") is None


def test_no_two_values_share_a_name():
    values = ["", ".", "..", "%", "%25", "/", "%2F", "a/b", "a%2Fb", "\x00", "%00", "%2E", "%2E%2E",
              "x", "x%", "%x"]
    names = [encode(v) for v in values]
    assert len(set(names)) == len(values)
    assert all("/" not in n and "\x00" not in n and n not in ("", ".", "..") for n in names)
    assert [decode(n) for n in names] == values
