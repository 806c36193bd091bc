"""Small datasets drawn in code, in each published layout `photobg prepare` reads, plus bad files."""

import io
import json
from pathlib import Path

import numpy as np
from conftest import make_photo
from PIL import Image

SIZE = (48, 40)  # width, height of the drawn photos


def write_pair(image_path, mask_path, seed=0, size=SIZE):
    """Draw a photo + object mask and save them (formats from the suffixes). Returns (photo, mask)."""
    photo, mask = make_photo(*size, seed=seed)
    for path, picture in ((image_path, photo), (mask_path, mask)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
    return photo, mask


def make_layout(root, layout, count=3):
    """Write a small dataset in `layout`'s published folder layout under `root`.

    Returns:
        (folder to give `photobg prepare`, {stem: (photo, mask, image file, mask file)} of the split it should
        read).
    """
    root = Path(root)
    if layout == "duts":  # the dataset root holds DUTS-TR and DUTS-TE; the training split is read
        dirs = {"DUTS-TR": ("DUTS-TR/DUTS-TR-Image", "DUTS-TR/DUTS-TR-Mask"), "DUTS-TE": None}
        test = ("DUTS-TE/DUTS-TE-Image", "DUTS-TE/DUTS-TE-Mask")
    elif layout == "dis5k":
        dirs = {"DIS-TR": ("DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt")}
        test = ("DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt")
    elif layout == "hrsod":
        dirs = {"train": ("HRSOD_release/HRSOD_train", "HRSOD_release/HRSOD_train_mask")}
        test = ("HRSOD_release/HRSOD_test", "HRSOD_release/HRSOD_test_mask")
    elif layout == "msra":  # images and masks side by side, with the archive's Readme
        dirs = {"imgs": ("MSRA10K_Imgs_GT/Imgs", "MSRA10K_Imgs_GT/Imgs")}
        test = None
        (root / "MSRA10K_Imgs_GT").mkdir(parents=True)
        (root / "MSRA10K_Imgs_GT" / "Readme.txt").write_text("MSRA10K")
    elif layout == "ecssd":
        dirs = {"all": ("ECSSD/images", "ECSSD/ground_truth_mask")}
        test = None
    elif layout == "hkuis":
        dirs = {"all": ("HKU-IS/imgs", "HKU-IS/gt")}
        test = None
    else:
        raise ValueError(layout)
    image_dir, mask_dir = next(v for v in dirs.values() if v)
    image_suffix = ".png" if layout == "hkuis" else ".jpg"
    expected = {}
    for i in range(count):
        stem = f"{layout}_{i:03d}"
        image_file, mask_file = root / image_dir / f"{stem}{image_suffix}", root / mask_dir / f"{stem}.png"
        expected[stem] = (*write_pair(image_file, mask_file, seed=i), image_file, mask_file)
    if test:
        write_pair(root / test[0] / "test_000.jpg", root / test[1] / "test_000.png", seed=99)
    folders = {
        "dis5k": "DIS5K",
        "hrsod": "HRSOD_release",
        "msra": "MSRA10K_Imgs_GT",
        "ecssd": "ECSSD",
        "hkuis": "HKU-IS",
    }
    return root / folders.get(layout, ""), expected


def rotated_jpeg(path, photo, orientation=6):
    """Save `photo` as a JPEG whose stored pixels need EXIF `orientation` to look like `photo`."""
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo.transpose(inverse[orientation]).save(path, exif=exif, quality=98)


def uint16_image(mask):
    """A 16-bit ("I;16") version of an 8-bit "L" image."""
    return Image.fromarray(np.asarray(mask).astype(np.uint16) * 257)


def truncated_jpeg_bytes(photo):
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def rle_counts(mask):
    """Uncompressed COCO RLE counts of a 0/1 array (column-major runs, starting with zeros)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return counts


def make_coco(root):
    """A tiny COCO: images with polygon, compressed-RLE and uncompressed-RLE instances, a crowd-only image,
    a tiny-instance image, an annotated image whose file is missing and a broken polygon, plus a captions file.

    Returns:
        (instances path, images dir, captions path, {image id: expected object mask as a bool array}).
    """
    from pycocotools import mask as mask_utils

    root = Path(root)
    images_dir = root / "train2017"
    images_dir.mkdir(parents=True)
    width, height = SIZE
    images, annotations, expected = [], [], {}

    def add_image(image_id, seed, save=True):
        photo, _ = make_photo(width, height, seed)
        name = f"{image_id:012d}.jpg"
        if save:
            photo.save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})

    def add(image_id, category, segmentation, area, crowd=0):
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "segmentation": segmentation,
                "area": area,
                "bbox": [0, 0, 1, 1],
                "iscrowd": crowd,
            }
        )

    # 1: a large polygon instance (a rectangle) and a smaller one of another category.
    add_image(1, 1)
    add(1, 1, [[8, 6, 30, 6, 30, 30, 8, 30]], 22 * 24)
    add(1, 2, [[34, 4, 44, 4, 44, 12, 34, 12]], 80)
    expected[1] = _box(8, 6, 30, 30)
    # 2: two instances of one category as compressed and uncompressed RLE, and a smaller other category.
    add_image(2, 2)
    first, second = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
    first[5:25, 4:20] = 1
    second[10:30, 26:44] = 1
    compressed = mask_utils.encode(np.asfortranarray(first))
    add(2, 3, {"size": [height, width], "counts": compressed["counts"].decode()}, int(first.sum()))
    add(2, 3, {"size": [height, width], "counts": rle_counts(second)}, int(second.sum()))
    add(2, 1, [[2, 32, 10, 32, 10, 38, 2, 38]], 48)
    expected[2] = (first | second).astype(bool)
    # 3: only a crowd region; 4: only a tiny instance; 5: annotated but its file is missing.
    add_image(3, 3)
    add(3, 1, {"size": [height, width], "counts": rle_counts(first)}, int(first.sum()), crowd=1)
    add_image(4, 4)
    add(4, 1, [[1, 1, 4, 1, 4, 4, 1, 4]], 9)
    add_image(5, 5, save=False)
    add(5, 1, [[8, 6, 30, 6, 30, 30, 8, 30]], 22 * 24)
    # 6: a polygon of two points, which pycocotools rejects.
    add_image(6, 6)
    add(6, 1, [[8, 6, 30, 6]], 22 * 24)
    categories = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "cup"}]
    instances = root / "instances_train2017.json"
    instances.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    captions = root / "captions_train2017.json"
    caption_annotations = [
        {"id": 1, "image_id": 1, "caption": "A dog on a rug."},
        {"id": 2, "image_id": 1, "caption": "A brown dog lying down."},
        {"id": 3, "image_id": 2, "caption": "Two cups on a table."},
    ]
    captions.write_text(json.dumps({"images": images, "annotations": caption_annotations}))
    return instances, images_dir, captions, expected


def _box(x0, y0, x1, y1):
    box = np.zeros((SIZE[1], SIZE[0]), bool)
    box[y0:y1, x0:x1] = True
    return box
