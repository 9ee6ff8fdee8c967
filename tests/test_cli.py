"""Bad input on the command line: one plain line naming the problem, a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import IDCFS, run_idcfs


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("idcfs: ") and "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def args(sample, s3_endpoint, tmp_path):
    """A good set of mount arguments; each test spoils one."""
    (tmp_path / "mnt").mkdir()
    return {"mountpoint": str(tmp_path / "mnt"), "--index": str(sample.index_dir),
            "--endpoint-url": s3_endpoint, "--cache-dir": str(tmp_path / "cache")}


def mount_with(args: dict, *extra: str, env=None) -> subprocess.CompletedProcess:
    flat = [args["mountpoint"]] + [x for k, v in args.items() if k != "mountpoint" for x in (k, v)]
    return run_idcfs("mount", *flat, *extra, env=env)


def test_missing_mountpoint(args, tmp_path):
    args["mountpoint"] = str(tmp_path / "absent")
    assert_one_line_error(mount_with(args), "does not exist", "absent")


def test_a_failure_after_the_starter_stopped_waiting_is_still_one_line(args, tmp_path):
    """The daemon closes its ready pipe once mounted; an error after that must not turn into a
    traceback about the closed pipe (fd 1000 is not open in the child)."""
    args["mountpoint"] = str(tmp_path / "absent")
    assert_one_line_error(mount_with(args, "--foreground", "--ready-fd", "1000"), "does not exist")


def test_mountpoint_that_is_a_file(args, tmp_path):
    (tmp_path / "file").write_text("x")
    args["mountpoint"] = str(tmp_path / "file")
    assert_one_line_error(mount_with(args), "not a directory")


def test_mountpoint_that_is_not_empty(args, tmp_path):
    (tmp_path / "mnt" / "something").write_text("x")
    assert_one_line_error(mount_with(args), "not empty")


def test_mountpoint_already_mounted(args, mount):
    args["mountpoint"] = str(mount)
    assert_one_line_error(mount_with(args), "already a mount point")


def test_missing_index_directory(args, tmp_path):
    args["--index"] = str(tmp_path / "nowhere")
    assert_one_line_error(mount_with(args), "does not exist", "nowhere")


def test_index_directory_without_the_index(args, tmp_path):
    (tmp_path / "empty").mkdir()
    args["--index"] = str(tmp_path / "empty")
    assert_one_line_error(mount_with(args), "no idc_index.parquet")


def test_index_that_is_not_parquet(args, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "idc_index.parquet").write_bytes(b"<html>not parquet</html>")
    args["--index"] = str(tmp_path / "bad")
    assert_one_line_error(mount_with(args), "not a readable parquet")


def test_index_that_is_unreadable(args, tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "idc_index.parquet").mkdir()
    args["--index"] = str(tmp_path / "dir")
    assert_one_line_error(mount_with(args), "idc_index.parquet")


def test_index_lacking_required_columns(args, tmp_path):
    (tmp_path / "cols").mkdir()
    pq.write_table(pa.table({"collection_id": ["x"], "PatientID": ["p"]}),
                   tmp_path / "cols" / "idc_index.parquet")
    args["--index"] = str(tmp_path / "cols")
    assert_one_line_error(mount_with(args), "lacks required column(s)", "StudyInstanceUID")


def test_index_that_is_another_idc_parquet_file(args, tmp_path, sample):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "idc_index.parquet").write_bytes(
        (sample.index_dir / "version_metadata_index.parquet").read_bytes())
    args["--index"] = str(tmp_path / "foreign")
    assert_one_line_error(mount_with(args), "lacks required column(s)")


def test_index_that_is_a_truncated_parquet_file(args, tmp_path, sample):
    (tmp_path / "cut").mkdir()
    data = (sample.index_dir / "idc_index.parquet").read_bytes()
    (tmp_path / "cut" / "idc_index.parquet").write_bytes(data[:len(data) // 2])
    args["--index"] = str(tmp_path / "cut")
    assert_one_line_error(mount_with(args), "not a readable parquet")


def test_layout_whose_names_would_be_longer_than_a_name_can_be(args):
    level = "%SeriesInstanceUID_%StudyInstanceUID_%SeriesInstanceUID_%StudyInstanceUID"
    proc = mount_with(args, "--layout", f"%collection_id/{level}")
    assert_one_line_error(proc, "255")
    assert not os.path.ismount(args["mountpoint"])


def test_index_whose_rows_cannot_be_indexed_fails_in_the_daemon_with_its_reason(args, tmp_path):
    (tmp_path / "types").mkdir()
    columns = ["collection_id", "PatientID", "StudyInstanceUID", "Modality", "SeriesInstanceUID",
               "crdc_series_uuid", "aws_bucket"]
    table = pa.table({c: pa.array([[1]], pa.list_(pa.int64())) for c in columns})
    pq.write_table(table, tmp_path / "types" / "idc_index.parquet")
    args["--index"] = str(tmp_path / "types")
    assert_one_line_error(mount_with(args), "could not index")
    assert not os.path.ismount(args["mountpoint"])


@pytest.mark.parametrize("url", ["not a url", "ftp://example.org", "http://", "http://host:port",
                                 "localhost:9000"])
def test_malformed_endpoint_url(args, url):
    args["--endpoint-url"] = url
    assert_one_line_error(mount_with(args), "malformed endpoint URL")


def test_unknown_mount_option(args):
    assert_one_line_error(mount_with(args, "-o", "frobnicate=1"), "unknown mount option: frobnicate")


def test_rw_mount_option(args):
    assert_one_line_error(mount_with(args, "-o", "rw"), "read-only")


def test_zero_connections(args):
    assert_one_line_error(mount_with(args, "--max-connections", "0"), "--max-connections")


def test_no_fusermount3(args):
    env = dict(os.environ, PATH="/nonexistent")
    assert_one_line_error(mount_with(args, env=env), "fusermount3 not found")


def test_no_fuse_device(args, tmp_path):
    fake = tmp_path / "not-a-device"
    fake.write_text("")
    command = " ".join([f"mount --bind {fake} /dev/fuse &&", *IDCFS, "mount",
                        *[x for k, v in args.items() for x in ((v,) if k == "mountpoint" else (k, v))]])
    proc = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True,
                          check=False, timeout=60)
    assert_one_line_error(proc, "/dev/fuse")


def test_umount_of_a_path_that_is_not_mounted(tmp_path):
    assert_one_line_error(run_idcfs("umount", str(tmp_path)), "not mounted")


def test_help_lists_every_option_of_the_table():
    from idcfs.options import OPTIONS

    out = subprocess.run([sys.executable, "-m", "idcfs", "mount", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in OPTIONS:
        assert f"--{option.name}" in out
    assert "-o OPT[=VAL]" in out


def test_the_readmes_table_of_options_is_the_table_the_parser_is_made_from():
    from pathlib import Path

    from idcfs.options import markdown_table

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert markdown_table() in readme, "README.md: paste the output of python -m idcfs.options"


@pytest.mark.parametrize("command", [["cache", "stats"], ["cache", "clear"], ["cache", "warm"]])
def test_every_option_of_the_other_commands_is_documented_in_the_readme(command):
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    out = subprocess.run([sys.executable, "-m", "idcfs", *command, "--help"], capture_output=True,
                         text=True, check=True).stdout
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", out)) - {"--help"}
    assert options, out
    missing = sorted(o for o in options if o not in readme)
    assert not missing, f"not in README.md: {missing}"
