"""How much training's resampling (area averaging, Pillow's BOX) differs from inference's (Lanczos, diffusers'
VaeImageProcessor) at the authors' 1.5x reduction (768 -> 512), on skimage's photos. docs/training.md cites it.

    python bench/resampling.py
"""

import numpy as np
import skimage.data
from PIL import Image

for name in ("coffee", "astronaut", "chelsea"):
    photo = Image.fromarray(getattr(skimage.data, name)())
    size = (round(photo.width / 1.5), round(photo.height / 1.5))
    box, lanczos = (np.asarray(photo.resize(size, f), float) for f in (Image.BOX, Image.LANCZOS))
    difference = np.abs(box - lanczos)
    print(
        f"{name} {photo.size} -> {size}: BOX vs LANCZOS mean {difference.mean():.2f}, "
        f"99th percentile {np.percentile(difference, 99):.0f} (levels of 255)"
    )
