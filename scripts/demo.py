"""`make demo`: idcfs end to end, offline: a local S3 server with sample IDC data, a real mount,
a listing, a DICOM read and a copy, then an unmount, each step printed as the command a user
would type."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import sample  # noqa: E402

BIN = Path(sys.executable).parent


def shell(command: str) -> None:
    print(f"\n$ {command}", flush=True)
    subprocess.run(command, shell=True, check=True, executable="/bin/bash")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="idcfs-demo-"))
    port = sample.free_port()
    print("starting a local S3 server with IDC-shaped sample data ...", flush=True)
    server = sample.start_moto(port)
    mnt = work / "idc"
    mnt.mkdir()
    try:
        data = sample.build_sample(f"http://127.0.0.1:{port}", work / "index")
        row = data.rows[2]
        series = f"{row['collection_id']}/{row['PatientID']}/{row['StudyInstanceUID']}/" \
                 f"{row['Modality']}_{row['SeriesInstanceUID']}"
        shell(f"{BIN}/idcfs mount {mnt} --index {work}/index --endpoint-url http://127.0.0.1:{port}"
              f" --cache-dir {work}/cache")
        shell(f"ls {mnt}")
        shell(f"ls '{mnt}/{row['collection_id']}'")
        shell(f"ls -l '{mnt}/{series}'")
        shell(f"{BIN}/python -c 'import pydicom, glob; ds = pydicom.dcmread(sorted(glob.glob("
              f"\"{mnt}/{series}/*.dcm\"))[0]); print(ds.Modality, ds.PatientID, ds.Rows, \"x\", "
              f"ds.Columns)'")
        shell(f"cp -r '{mnt}/{series}' {work}/copy && ls {work}/copy | wc -l")
        shell(f"{BIN}/idcfs umount {mnt}")
        print("\ndemo finished: mounted, listed, read with pydicom, copied, unmounted.")
        return 0
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, check=False)
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
