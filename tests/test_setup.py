"""`make`'s first step on a fresh machine (scripts/system-deps.sh): what the system lacks is
installed as root with apt, or named in one line with the command that installs it.

Each case runs the script with a PATH holding only stand-ins for the tools it asks about, so the
machine's own packages neither help nor get touched; apt-get's stand-in records its calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "system-deps.sh"


def stand_in(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def run_deps(tmp_path: Path, *, have: set[str], uid: int = 1000, apt: str | None = "exit 0",
             python: str | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The script's answer with only the tools in have (fusermount3, pkg-config, fuse3: the
    library pkg-config knows, cc), a user id, an apt-get that runs apt (None: no apt-get), and
    its recorded calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "apt-calls"
    if python is None:
        os.symlink(sys.executable, bin_dir / "python3")
    else:
        stand_in(bin_dir, "python3", python)
    stand_in(bin_dir, "id", f"echo {uid}")
    if "fusermount3" in have:
        stand_in(bin_dir, "fusermount3", "exit 0")
    if "pkg-config" in have:
        stand_in(bin_dir, "pkg-config", f"exit {0 if 'fuse3' in have else 1}")
    if "cc" in have:
        stand_in(bin_dir, "cc", "exit 0")
    if apt is not None:
        stand_in(bin_dir, "apt-get", f'echo "$*" >> {calls}\n{apt}')
    proc = subprocess.run(["/bin/sh", str(SCRIPT), "python3"], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)}, timeout=60, check=False)
    return proc, calls.read_text().splitlines() if calls.exists() else []


EVERYTHING = {"fusermount3", "pkg-config", "fuse3", "cc"}


def test_a_machine_with_everything_goes_on_silently(tmp_path):
    proc, calls = run_deps(tmp_path, have=EVERYTHING)
    assert (proc.returncode, proc.stderr, calls) == (0, "", [])


@pytest.mark.parametrize("lacking,packages", [
    ({"fuse3"}, "libfuse3-dev"),
    ({"fusermount3", "fuse3"}, "fuse3 libfuse3-dev"),
    ({"pkg-config", "fuse3"}, "pkg-config libfuse3-dev"),
    ({"cc"}, "gcc"),
])
def test_a_user_is_told_in_one_line_the_command_that_installs_what_is_missing(
        tmp_path, lacking, packages):
    proc, calls = run_deps(tmp_path, have=EVERYTHING - lacking)
    assert proc.returncode == 1 and calls == []
    assert proc.stderr.splitlines() == [
        f"idcfs: missing system packages; install them with: sudo apt-get install {packages}"]


def test_root_with_apt_installs_what_is_missing(tmp_path):
    proc, calls = run_deps(tmp_path, have={"cc", "pkg-config"}, uid=0)
    assert proc.returncode == 0, proc.stderr
    assert calls == ["install -y -qq fuse3 libfuse3-dev"]
    assert "installing the system packages it needs: fuse3 libfuse3-dev" in proc.stderr


def test_root_on_a_machine_without_package_lists_updates_them_once(tmp_path):
    # apt-get install fails until apt-get update has run
    apt = f'case "$1" in update) : > {tmp_path}/updated ;; install) [ -e {tmp_path}/updated ] ;; esac'
    proc, calls = run_deps(tmp_path, have={"cc", "pkg-config", "fusermount3"}, uid=0, apt=apt)
    assert proc.returncode == 0, proc.stderr
    assert calls == ["install -y -qq libfuse3-dev", "update -qq", "install -y -qq libfuse3-dev"]


def test_root_whose_apt_cannot_install_is_told_what_to_run(tmp_path):
    proc, _ = run_deps(tmp_path, have={"cc", "pkg-config", "fusermount3"}, uid=0, apt="exit 100")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "idcfs: apt-get could not install libfuse3-dev; run: apt-get update && apt-get install "
        "libfuse3-dev")


def test_a_machine_without_apt_gets_the_debian_names_and_what_they_are(tmp_path):
    proc, _ = run_deps(tmp_path, have={"cc"}, apt=None)
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("idcfs: missing system packages (Debian names: fuse3 pkg-config "
                           "libfuse3-dev)")


def test_a_python_older_than_3_11_is_refused_with_the_way_round_it(tmp_path):
    old = 'case "$2" in *version_info*) exit 1 ;; *platform*) echo 3.9.2 ;; esac'
    proc, calls = run_deps(tmp_path, have=EVERYTHING, python=old)
    assert proc.returncode == 1 and calls == []
    assert proc.stderr.splitlines() == [
        "idcfs: python3 is Python 3.9.2, idcfs needs 3.11 or newer: run make PYTHON=python3.11 "
        "(or newer)"]


def test_every_make_target_that_installs_checks_the_system_first():
    root = SCRIPT.parent.parent
    # Under `make test` the outer make's settings would make this one print its directory.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    for target in ("install", "dev", "demo", "test"):
        plan = subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=root,
                              env=env, capture_output=True, text=True, check=True).stdout.splitlines()
        assert plan[0] == "sh scripts/system-deps.sh python3", (target, plan)
