"""Acceptance: the DICOM and shell tools people already use give, on files in the mount, exactly
what they give on a plain local copy of the same objects.

Every tool runs twice, once with its working directory in the mount and once in the local copy,
with the same relative paths, so that outputs which name their inputs compare as they are.
"""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import force_unmount, mounted, sample_files, series_dir
from pydicom.fileset import FileSet
from pydicom.uid import (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless,
                         JPEGLSNearLossless, RLELossless)

EXAMPLE = Path(__file__).parent.parent / "examples" / "load_series.py"
# dcmtk's decoder for each compressed transfer syntax in the sample; dcmconv reads the rest.
# dcmtk has no JPEG 2000 codec: those files are decoded by GDCM (gdcmconv) below.
DCMTK_DECODER = {RLELossless: "dcmdrle", JPEGLSLossless: "dcmdjpls", JPEGLSNearLossless: "dcmdjpls",
                 JPEGBaseline8Bit: "dcmdjpeg", JPEGExtended12Bit: "dcmdjpeg",
                 JPEGLosslessSV1: "dcmdjpeg"}
JPEG2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


@pytest.fixture(scope="module")
def tools_mount(tools_sample, s3_endpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("tools-mount")
    with mounted(tools_sample, base / "mnt", base / "cache", endpoint=s3_endpoint) as mnt:
        yield mnt


@pytest.fixture(scope="module")
def sides(tools_mount, tools_copy) -> dict[str, Path]:
    return {"mount": tools_mount, "local": tools_copy}


def series(sample, modality: str | None = None) -> list[Path]:
    return [series_dir(Path(), row) for row in sample.rows
            if modality is None or row["Modality"] == modality]


def collections(sample) -> list[str]:
    return sorted({series_dir(Path(), row).parts[0] for row in sample.rows})


def run(cmd: list[str], cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, errors="replace",
                          timeout=300, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def same_on_both(sides: dict[str, Path], cmd: list[str]) -> tuple[int, str, str]:
    """Run cmd in the mount and in the local copy; its exit code and output must be equal."""
    in_mount, in_local = run(cmd, sides["mount"]), run(cmd, sides["local"])
    assert in_mount == in_local, cmd
    return in_mount


def trees_equal(a: Path, b: Path) -> None:
    """Same relative paths, same kinds, same bytes."""
    names_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    assert names_a == names_b
    for rel in names_a:
        assert (a / rel).is_dir() == (b / rel).is_dir(), rel
        if (a / rel).is_file():
            assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def transfer_syntax(path: Path):
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


# --- pydicom ---------------------------------------------------------------------------------

def test_pydicom_reads_every_file_to_the_same_dataset_and_pixels(tools_sample, sides):
    for rel in sample_files(tools_sample):
        ours, theirs = (pydicom.dcmread(sides[s] / rel) for s in ("mount", "local"))
        assert ours == theirs, rel
        if "PixelData" in theirs:
            assert np.array_equal(ours.pixel_array, theirs.pixel_array), rel


def test_pydicom_loads_a_series_directory_into_the_same_volume(tools_sample, sides):
    def volume(folder: Path) -> np.ndarray:
        slices = [pydicom.dcmread(f) for f in folder.glob("*.dcm")]
        slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
        return np.stack([ds.pixel_array for ds in slices])

    for rel in series(tools_sample, "CT") + series(tools_sample, "MR"):
        ours, theirs = volume(sides["mount"] / rel), volume(sides["local"] / rel)
        assert ours.shape[0] == len(list((sides["local"] / rel).glob("*.dcm")))
        assert np.array_equal(ours, theirs), rel


def test_pydicom_fileset_of_a_series_writes_the_same_instances(tools_sample, sides, tmp_path):
    written = {}
    rel = series(tools_sample, "CT")[0]
    for side, root in sides.items():
        fileset = FileSet()
        for path in sorted((root / rel).iterdir()):
            fileset.add(path)
        fileset.write(tmp_path / side)
        reread = FileSet(tmp_path / side / "DICOMDIR")
        written[side] = sorted((str(Path(i.path).relative_to(tmp_path / side)),
                                i.SOPInstanceUID, Path(i.path).read_bytes()) for i in reread)
    assert len(written["local"]) == len(list((sides["local"] / rel).iterdir()))
    assert written["mount"] == written["local"]


# --- dcmtk -----------------------------------------------------------------------------------

def test_dcmdump_prints_every_file_as_it_does_a_local_copy(tools_sample, sides):
    for rel in sample_files(tools_sample):
        code, out, _ = same_on_both(sides, ["dcmdump", "+L", "+U8", str(rel)])
        assert code == 0 and "# Dicom-File-Format" in out, rel


def test_dcmftest_finds_every_file_to_be_dicom(tools_sample, sides):
    code, out, _ = same_on_both(sides, ["dcmftest", *map(str, sample_files(tools_sample))])
    assert code == 0
    assert out.count("yes: ") == len(sample_files(tools_sample))


def test_dcmtk_decoders_write_identical_uncompressed_files(tools_sample, sides, tmp_path):
    decoded = 0
    for n, rel in enumerate(sample_files(tools_sample)):
        syntax = transfer_syntax(sides["local"] / rel)
        if syntax in JPEG2000:
            continue
        tool = DCMTK_DECODER.get(syntax, "dcmconv")
        outputs = {side: tmp_path / f"{side}-{n}.dcm" for side in sides}
        results = {side: run([tool, str(rel), str(outputs[side])], sides[side])[0]
                   for side in sides}
        assert results["mount"] == results["local"] == 0, (tool, rel)
        assert filecmp.cmp(outputs["mount"], outputs["local"], shallow=False), (tool, rel)
        decoded += tool != "dcmconv"
    assert decoded >= 4  # RLE, JPEG-LS, JPEG baseline and lossless were decoded


# --- GDCM ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tool", [["gdcminfo", "--md5sum"], ["gdcmdump"]])
def test_gdcm_reports_every_file_as_it_does_a_local_copy(tools_sample, sides, tool):
    for rel in sample_files(tools_sample):
        code, out, _ = same_on_both(sides, [*tool, str(rel)])
        assert code == 0 and out, rel


def test_gdcmconv_decodes_every_image_including_jpeg2000_identically(tools_sample, sides,
                                                                     tmp_path):
    decoded = set()
    for n, rel in enumerate(sample_files(tools_sample)):
        if "PixelData" not in pydicom.dcmread(sides["local"] / rel):
            continue
        outputs = {side: tmp_path / f"{side}-{n}.dcm" for side in sides}
        for side in sides:
            assert run(["gdcmconv", "--raw", str(rel), str(outputs[side])], sides[side])[0] == 0
        assert filecmp.cmp(outputs["mount"], outputs["local"], shallow=False), rel
        decoded.add(transfer_syntax(sides["local"] / rel))
    assert set(JPEG2000) & decoded


# --- dcm2niix --------------------------------------------------------------------------------

def test_dcm2niix_converts_each_series_to_identical_nifti_and_json(tools_sample, sides,
                                                                   tmp_path):
    """Byte-identical output wherever dcm2niix is itself reproducible: for frames it cannot
    decode (a multi-fragment JPEG) it writes uninitialised memory, so two runs on the same local
    files differ; those outputs are held to the same names and sizes (which name gets which size
    follows readdir order, which differs between any two filesystems)."""
    def convert(rel: Path, root: Path, out: Path) -> int:
        out.mkdir()
        return run(["dcm2niix", "-b", "y", "-z", "n", "-o", str(out), str(rel)], root)[0]

    converted = []
    for n, rel in enumerate(series(tools_sample)):
        outputs = {side: tmp_path / f"{side}-{n}" for side in sides}
        codes = {convert(rel, sides[side], out) for side, out in outputs.items()}
        assert len(codes) == 1, rel
        if convert(rel, sides["local"], tmp_path / f"again-{n}") == codes.pop() and \
                _same_bytes(outputs["local"], tmp_path / f"again-{n}"):
            trees_equal(outputs["mount"], outputs["local"])
        else:
            assert _names_and_sizes(outputs["mount"]) == _names_and_sizes(outputs["local"])
        converted += [p.name for p in outputs["mount"].iterdir()]
    assert any(name.startswith("CT_") and name.endswith(".nii") for name in converted)
    assert any(name.startswith("CT_") and name.endswith(".json") for name in converted)


def _same_bytes(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(f, b / f.name, shallow=False) for f in a.iterdir())


def _names_and_sizes(folder: Path) -> tuple[list[str], list[int]]:
    return (sorted(f.name for f in folder.iterdir()),
            sorted(f.stat().st_size for f in folder.iterdir()))


# --- SimpleITK -------------------------------------------------------------------------------

def test_simpleitk_reads_each_volume_with_the_same_geometry_and_voxels(tools_sample, sides):
    for rel in series(tools_sample, "CT") + series(tools_sample, "SM"):
        images = {}
        for side, root in sides.items():
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(root / rel))
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(names)
            images[side] = (reader.Execute(), [Path(n).relative_to(root) for n in names])
        (ours, our_names), (theirs, their_names) = images["mount"], images["local"]
        assert our_names == their_names and our_names
        assert ours.GetSize() == theirs.GetSize() and ours.GetSpacing() == theirs.GetSpacing()
        assert ours.GetOrigin() == theirs.GetOrigin()
        assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(theirs))


# --- shell tools -----------------------------------------------------------------------------

def test_ls_lr_lists_the_same_names_kinds_and_sizes(tools_sample, sides):
    def entries(out: str) -> list[tuple[str, str, str]]:
        fields = (line.split() for line in out.splitlines())
        return [(f[0][0], f[4], f[-1]) for f in fields if len(f) >= 9 and f[0][0] in "-d"]

    listings = {side: run(["ls", "-lR", *collections(tools_sample)], root)
                for side, root in sides.items()}
    assert listings["mount"][0] == listings["local"][0] == 0
    ours, theirs = entries(listings["mount"][1]), entries(listings["local"][1])
    assert [e for e in ours if e[0] == "-"] == [e for e in theirs if e[0] == "-"]
    assert [(k, n) for k, _, n in ours] == [(k, n) for k, _, n in theirs]
    assert len([e for e in ours if e[0] == "-"]) == len(sample_files(tools_sample))


def test_find_finds_every_dcm_file(tools_sample, sides):
    found = {side: sorted(run(["find", ".", "-name", "*.dcm"], root)[1].split())
             for side, root in sides.items()}
    assert found["mount"] == found["local"] == sorted(f"./{p}" for p in sample_files(tools_sample))


def test_du_sb_counts_exact_bytes(tools_sample, sides):
    for rel in sample_files(tools_sample):
        same_on_both(sides, ["du", "-b", str(rel)])
    for collection in collections(tools_sample):
        code, out, _ = run(["du", "-sb", collection], sides["mount"])
        expected = sum((sides["local"] / p).stat().st_size for p in sample_files(tools_sample)
                       if p.parts[0] == collection)
        assert code == 0 and int(out.split()[0]) == expected


def test_cp_r_copies_the_whole_tree_byte_for_byte(tools_sample, sides, tmp_path):
    for collection in collections(tools_sample):
        subprocess.run(["cp", "-r", str(sides["mount"] / collection), str(tmp_path)], check=True)
    trees_equal(tmp_path, sides["local"])


def test_rsync_a_copies_everything_and_a_second_run_transfers_nothing(tools_sample, sides,
                                                                      tmp_path):
    def rsync() -> str:
        return subprocess.run(["rsync", "-a", "--stats", *collections(tools_sample),
                               str(tmp_path)], cwd=sides["mount"], capture_output=True,
                              text=True, check=True).stdout

    first = rsync()
    assert re.search(rf"regular files transferred: {len(sample_files(tools_sample))}\b", first)
    trees_equal(tmp_path, sides["local"])
    assert re.search(r"regular files transferred: 0\b", rsync())


def test_tar_archives_the_same_files_and_bytes(tools_sample, sides, tmp_path):
    archive = tmp_path / "series.tar"
    subprocess.run(["tar", "cf", str(archive), *collections(tools_sample)], cwd=sides["mount"],
                   check=True, capture_output=True)
    (tmp_path / "out").mkdir()
    subprocess.run(["tar", "xf", str(archive), "-C", str(tmp_path / "out")], check=True)
    trees_equal(tmp_path / "out", sides["local"])


def test_sha256sum_of_every_file_matches(tools_sample, sides):
    code, out, _ = same_on_both(sides, ["sha256sum", *map(str, sample_files(tools_sample))])
    assert code == 0 and len(out.splitlines()) == len(sample_files(tools_sample))


def test_file_identifies_every_file_as_it_does_a_local_copy(tools_sample, sides):
    """CT_small.dcm's preamble holds a TIFF header, so `file` calls some of these TIFF."""
    code, out, _ = same_on_both(sides, ["file", *map(str, sample_files(tools_sample))])
    kinds = [line.split(":", 1)[1].strip() for line in out.splitlines()]
    assert code == 0 and len(kinds) == len(sample_files(tools_sample))
    assert all(k.startswith(("DICOM medical imaging data", "TIFF image data")) for k in kinds)


def test_stat_reports_the_same_size_and_kind(tools_sample, sides):
    same_on_both(sides, ["stat", "-c", "%n %s %F %h", *map(str, sample_files(tools_sample))])
    same_on_both(sides, ["stat", "-c", "%n %F", *map(str, series(tools_sample))])


@pytest.mark.parametrize("cmd", [["head", "-c", "132"], ["tail", "-c", "5000"],
                                 ["head", "-c", "1000000"]])
def test_head_and_tail_return_the_same_bytes(tools_sample, sides, cmd):
    for rel in sample_files(tools_sample):
        outputs = [subprocess.run([*cmd, str(rel)], cwd=root, capture_output=True,
                                  check=True).stdout for root in sides.values()]
        assert outputs[0] == outputs[1], rel
    assert outputs[0]


# --- the example script ----------------------------------------------------------------------

def test_example_script_mounts_a_cohort_and_loads_a_series_into_numpy(tools_sample, s3_endpoint,
                                                                      tools_copy, tmp_path):
    row = next(r for r in tools_sample.rows if r["Modality"] == "CT")
    saved = tmp_path / "volume.npy"
    try:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLE), str(tmp_path / "mnt"), "--collection",
             row["collection_id"], "--modality", "CT", "--save", str(saved),
             "--index", str(tools_sample.index_dir), "--endpoint-url", s3_endpoint,
             "--cache-dir", str(tmp_path / "cache")],
            capture_output=True, text=True, timeout=120, check=False)
    finally:
        force_unmount(tmp_path / "mnt")
    assert proc.returncode == 0, proc.stderr
    slices = [pydicom.dcmread(f) for f in (tools_copy / series_dir(Path(), row)).iterdir()]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    expected = np.stack([pydicom.pixels.apply_modality_lut(ds.pixel_array, ds) for ds in slices])
    assert np.array_equal(np.load(saved), expected)
    assert f"{len(slices)} slices" in proc.stdout
