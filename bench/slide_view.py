"""What a pathologist's viewer does first with a slide: open it, show its thumbnail, show a
1024x1024 region of the base level at its centre (OpenSlide).

    python bench/slide_view.py FILE_OF_THE_SLIDE

Prints the SHA-256 of the thumbnail's and the region's pixels: what the viewer showed, to be
compared with the same view of a downloaded copy.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import openslide

slide = openslide.OpenSlide(sys.argv[1])
thumbnail = np.asarray(slide.associated_images["thumbnail"])
width, height = slide.level_dimensions[0]
region = np.asarray(slide.read_region((width // 2, height // 2), 0, (1024, 1024)))
digest = hashlib.sha256()
for pixels in (thumbnail, region):
    digest.update(repr(pixels.shape).encode() + pixels.tobytes())
print(digest.hexdigest())
