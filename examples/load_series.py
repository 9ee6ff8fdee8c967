"""Mount one IDC collection with idcfs and load a series of it into a numpy volume with pydicom.

    python examples/load_series.py ~/idc --collection rider_phantom_mri --modality MR

nothing is downloaded beforehand: only the files of the series that is read come over the
network (and stay in the local cache for next time). Options after the collection are handed to
`idcfs mount` unchanged (--idc-version, --source gcs, --index, --endpoint-url, --cache-dir, ...).
Needs pydicom and numpy (`pip install pydicom`) next to idcfs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

IDCFS = [sys.executable, "-m", "idcfs"]


def first_series(collection: Path, modality: str) -> Path:
    """The first series folder of the modality, in collection/patient/study/series order."""
    for patient in sorted(collection.iterdir()):
        for study in sorted(patient.iterdir()):
            for folder in sorted(study.iterdir()):
                if folder.name.startswith(f"{modality}_"):
                    return folder
    raise SystemExit(f"no {modality} series in {collection.name}")


def load_volume(folder: Path) -> np.ndarray:
    """Slices ordered along the patient axis, in modality units (Hounsfield units for CT)."""
    slices = [pydicom.dcmread(path) for path in folder.glob("*.dcm")]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in slices])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--collection", required=True, help="collection_id, e.g. rider_phantom_mri")
    parser.add_argument("--modality", default="CT")
    parser.add_argument("--save", type=Path, metavar="FILE.npy", help="write the volume here")
    args, mount_options = parser.parse_known_args()

    args.mountpoint.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run([*IDCFS, "mount", str(args.mountpoint),
                            "--collection", args.collection, *mount_options], check=False)
    if mount.returncode:
        raise SystemExit(mount.returncode)
    try:
        folder = first_series(args.mountpoint / args.collection, args.modality)
        volume = load_volume(folder)
        print(f"{folder.relative_to(args.mountpoint)}: {len(volume)} slices, "
              f"volume {volume.shape} {volume.dtype}, values {volume.min()}..{volume.max()}")
        if args.save:
            np.save(args.save, volume)
    finally:
        subprocess.run([*IDCFS, "umount", str(args.mountpoint)], check=False)


if __name__ == "__main__":
    main()
