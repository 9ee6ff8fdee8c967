"""What a slide viewer sees of a slide folder, as JSON: OpenSlide or wsidicom opens the folder,
reads its levels and associated images and two regions (a 1024x1024 region of the base level,
the whole lowest level), and hashes every pixel. Run against the mount and against a local copy,
the two answers must be equal.

    python tests/slide_reader.py openslide|wsidicom FOLDER
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def _digest(image) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(image)).tobytes()).hexdigest()


def with_openslide(folder: Path) -> dict:
    import openslide

    slide = openslide.OpenSlide(str(folder / "level0.dcm"))
    try:
        lowest = slide.level_count - 1
        return {
            "levels": slide.level_count,
            "dimensions": [list(d) for d in slide.level_dimensions],
            "associated": {name: _digest(image)
                           for name, image in sorted(slide.associated_images.items())},
            "base_region": _digest(slide.read_region((1000, 1200), 0, (1024, 1024))),
            "lowest_level": _digest(slide.read_region((0, 0), lowest,
                                                      slide.level_dimensions[lowest])),
        }
    finally:
        slide.close()


def with_wsidicom(folder: Path) -> dict:
    from wsidicom import WsiDicom

    slide = WsiDicom.open(folder)
    try:
        sizes = [[level.size.width, level.size.height] for level in slide.levels]
        lowest = len(slide.levels) - 1
        return {
            "levels": len(slide.levels),
            "dimensions": sizes,
            "associated": {"label": _digest(slide.read_label()),
                           "thumbnail": _digest(slide.read_thumbnail((256, 256)))},
            "base_region": _digest(slide.read_region((1000, 1200), 0, (1024, 1024))),
            "lowest_level": _digest(slide.read_region((0, 0), lowest, tuple(sizes[lowest]))),
        }
    finally:
        slide.close()


if __name__ == "__main__":
    reader, folder = sys.argv[1], Path(sys.argv[2])
    print(json.dumps({"openslide": with_openslide, "wsidicom": with_wsidicom}[reader](folder)))
