"""What a pathologist's viewer does first with a slide: open it, show its thumbnail, show a
1024x1024 region of the base level at its centre (OpenSlide).

    python bench/slide_view.py FILE_OF_THE_SLIDE

Prints the CRC-32 of the thumbnail and the region (pixels.py): what the viewer showed, to be
compared with the same view of the objects themselves.
"""

from __future__ import annotations

import sys

import numpy as np
import openslide

from pixels import crc

slide = openslide.OpenSlide(sys.argv[1])
thumbnail = np.asarray(slide.associated_images["thumbnail"])
width, height = slide.level_dimensions[0]
region = np.asarray(slide.read_region((width // 2, height // 2), 0, (1024, 1024)))
print(crc(thumbnail, region))
