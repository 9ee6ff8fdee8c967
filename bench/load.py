"""What a training pipeline's loader does with a series: read every file with pydicom, order the
slices along the patient axis, and stack their pixels into a volume.

    python bench/load.py volume FOLDER            # one series
    python bench/load.py loader WORKERS FOLDER... # whole series in worker processes, at random
"""

from __future__ import annotations

import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom


def volume(folder: str) -> tuple[int, ...]:
    slices = [pydicom.dcmread(path) for path in sorted(Path(folder).iterdir())]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array for ds in slices]).shape


if __name__ == "__main__":
    if sys.argv[1] == "volume":
        print(volume(sys.argv[2]))
    else:
        folders = sys.argv[3:]
        random.Random(5).shuffle(folders)
        with ProcessPoolExecutor(int(sys.argv[2])) as pool:
            print(len(list(pool.map(volume, folders))))
