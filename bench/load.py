"""What a training pipeline's loader does with a series: read every file with pydicom, order the
slices along the patient axis, and stack their pixels into a volume.

    python bench/load.py volume FOLDER            # one series
    python bench/load.py loader WORKERS FOLDER... # whole series in worker processes, at random

Prints, as JSON, each series' SeriesInstanceUID and the CRC-32 of its volume (pixels.py): what
the loader made, to be compared with the same load run on the objects themselves.
"""

from __future__ import annotations

import json
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom

from pixels import crc


def volume(folder: str) -> tuple[str, str]:
    """(SeriesInstanceUID, the CRC-32 of the stacked volume)."""
    slices = [pydicom.dcmread(path) for path in sorted(Path(folder).iterdir())]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return str(slices[0].SeriesInstanceUID), crc(np.stack([ds.pixel_array for ds in slices]))


if __name__ == "__main__":
    if sys.argv[1] == "volume":
        print(json.dumps(dict([volume(sys.argv[2])])))
    else:
        folders = sys.argv[3:]
        random.Random(5).shuffle(folders)
        with ProcessPoolExecutor(int(sys.argv[2])) as pool:
            print(json.dumps(dict(pool.map(volume, folders)), sort_keys=True))
