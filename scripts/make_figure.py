"""Draw assets/how_it_works.png: what the pipeline makes of a cutout, with the real convention functions.

    python scripts/make_figure.py

Panels: the RGBA cutout (on a checkerboard), its object mask, the inpaint variant's ControlNet input (the
inpaint mask, white = generate), the base variant's (the object on black), and a result of the tiny random
test model (noise around the untouched cup: it shows what is kept, not what a trained model paints).
"""

import numpy as np
import torch
from PIL import Image, ImageDraw

from photobg.conventions import make_control_image, object_mask_to_tensor
from photobg.masks import load_image, split_object
from photobg.models import load_pipeline

TILE = 300
LABELS = ["cutout (RGBA)", "object_mask", "control: inpaint variant", "control: base variant", "tiny test model"]


def checkerboard(size, square=16):
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    board = np.where((xx // square + yy // square) % 2, 205, 245).astype(np.uint8)
    return Image.fromarray(board).convert("RGB")


def main():
    cutout = load_image("assets/coffee_cutout.png")
    photo, object_mask = split_object(cutout)
    shown = checkerboard(cutout.size)
    shown.paste(photo, mask=object_mask)
    image = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    # The control image is made from the soft mask (1 - object mask), as in training and the pipeline.
    soft_inpaint = 1 - object_mask_to_tensor(object_mask, photo.size)
    panels = [shown, object_mask.convert("RGB")]
    for channels in (9, 4):
        control = make_control_image(image, soft_inpaint, channels)[0].permute(1, 2, 0).numpy()
        panels.append(Image.fromarray((control * 255).round().astype(np.uint8)))
    pipe = load_pipeline("tiny-inpainting", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    panels.append(pipe("a cup on a marble table", image=cutout, num_inference_steps=4, generator=generator).images[0])
    height = TILE * photo.height // photo.width
    figure = Image.new("RGB", (TILE * len(panels), height + 24), "white")
    draw = ImageDraw.Draw(figure)
    for k, (panel, label) in enumerate(zip(panels, LABELS)):
        figure.paste(panel.resize((TILE, height), Image.LANCZOS), (k * TILE, 24))
        draw.text((k * TILE + 6, 6), label, fill="black")
    figure.save("assets/how_it_works.png", optimize=True)


if __name__ == "__main__":
    main()
