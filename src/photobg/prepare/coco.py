"""COCO as a salient-object source: pick the salient instance(s) of each image from an instances annotation
file, and rasterise their polygons or RLE masks with pycocotools.

The rule (documented in `photobg prepare --help` and written into the dataset card):
  - crowd annotations (`iscrowd: 1`) are never chosen;
  - candidates are the instances covering at least `min_area` of the image (annotation `area` / image area);
  - `largest`: the largest candidate alone; `category`: the largest plus every other candidate of its
    category (a group of people, a herd); `all`: every candidate;
  - images with no candidate, or whose chosen instances cover more than `max_area` together (summed areas),
    are left out and counted in the card.
"""

import json
from pathlib import Path

import numpy as np

from .sources import Source

SELECTION_MODES = ("largest", "category", "all")


def read_json(path, what):
    """Parse a JSON file, with an error that names the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a {what} file (not JSON: {err}).") from None


def check_instances(data, path):
    """Raise ValueError naming `path` unless `data` looks like a COCO instances (segmentation) file."""
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in keys):
        raise ValueError(f"{path}: not a COCO instances file (needs lists 'images', 'annotations', 'categories').")
    annotations = data["annotations"]
    if annotations and "caption" in annotations[0] and "segmentation" not in annotations[0]:
        raise ValueError(f"{path}: a COCO captions file, not instances; pass it as --coco-captions.")
    if annotations and "segmentation" not in annotations[0]:
        raise ValueError(f"{path}: not a COCO instances file (its annotations have no 'segmentation').")
    for image in data["images"][:1]:
        if not {"id", "file_name", "width", "height"} <= set(image):
            raise ValueError(f"{path}: not a COCO instances file (images need id, file_name, width, height).")


def read_captions(path):
    """{image id: [captions]} from a COCO captions file (`captions_train2017.json`)."""
    data = read_json(path, "COCO captions")
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list) or (annotations and "caption" not in annotations[0]):
        raise ValueError(f"{path}: not a COCO captions file (needs 'annotations' with 'image_id' and 'caption').")
    captions = {}
    for annotation in annotations:
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    return captions


def coco_source(name, annotations_path, images_dir, captions_path=None, mode="largest", min_area=0.05, max_area=0.8):
    """Enumerate COCO images with their chosen salient instances (see the module docstring for the rule).

    Args:
        name: the source name (ids are `NAME/<image id>`).
        annotations_path: an instances file (`instances_train2017.json`).
        images_dir: the folder of its images (`train2017/`).
        captions_path: optional COCO captions file; its captions become the examples' texts.
        mode: `largest`, `category` or `all`.
        min_area, max_area: fractions of the image area (see the rule).

    Returns:
        A `Source` whose items carry the chosen segmentations; images without a suitable instance are in
        its problems.
    """
    if mode not in SELECTION_MODES:
        raise ValueError(f"Unknown COCO selection {mode!r}; choose one of: {', '.join(SELECTION_MODES)}.")
    if not Path(images_dir).is_dir():
        raise ValueError(f"{images_dir}: no such folder (--coco-images).")
    data = read_json(annotations_path, "COCO instances")
    check_instances(data, annotations_path)
    captions = read_captions(captions_path) if captions_path else {}
    categories = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
    by_image = {}
    for annotation in data["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    items, problems = [], []
    for image in sorted(data["images"], key=lambda im: im["id"]):
        path = Path(images_dir) / image["file_name"]
        chosen, reason = select_instances(by_image.get(image["id"], []), image, mode, min_area, max_area)
        if reason:
            problems.append({"source": name, "file": str(path), "reason": reason, "detail": f"image id {image['id']}"})
            continue
        items.append(
            {
                "source": name,
                "id": f"{name}/{image['id']}",
                "image": str(path),
                "mask": None,
                "coco": {
                    "height": image["height"],
                    "width": image["width"],
                    "segmentations": [a["segmentation"] for a in chosen],
                },
                "captions": captions.get(image["id"], []),
                "category": categories.get(chosen[0]["category_id"], ""),
            }
        )
    rule = f"{mode}, instances >= {min_area:.0%} of the image, chosen <= {max_area:.0%}, no crowd regions"
    description = f"COCO {annotations_path} + images {images_dir} ({rule})"
    if captions_path:
        description += f", captions {captions_path}"
    return Source(name, "coco", description, items, problems)


def select_instances(annotations, image, mode="largest", min_area=0.05, max_area=0.8):
    """The salient instances of one COCO image.

    Returns:
        (chosen annotations, None), or ([], why none was chosen).
    """
    image_area = image["width"] * image["height"]
    candidates = [a for a in annotations if not a.get("iscrowd") and _area(a) >= min_area * image_area]
    if not candidates:
        return [], f"COCO: no instance covers {min_area:.0%} of the image"
    candidates.sort(key=lambda a: (-_area(a), a.get("id", 0)))
    largest = candidates[0]
    if mode == "largest":
        chosen = [largest]
    elif mode == "category":
        chosen = [a for a in candidates if a["category_id"] == largest["category_id"]]
    else:
        chosen = candidates
    if sum(_area(a) for a in chosen) > max_area * image_area:
        return [], f"COCO: the chosen instances cover more than {max_area:.0%} of the image"
    return chosen, None


def rasterize(coco):
    """The union of an item's chosen instances as a uint8 (H, W) mask, 255 = object.

    Args:
        coco: the item's `coco` dict: height, width and segmentations (polygons, uncompressed or
            compressed RLE, as in COCO annotation files).
    """
    from pycocotools import mask as mask_utils

    height, width = coco["height"], coco["width"]
    rles = []
    for segmentation in coco["segmentations"]:
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
            rles.append(segmentation)  # compressed RLE, used as is
        else:  # polygons -> one RLE per polygon; uncompressed RLE -> one RLE
            encoded = mask_utils.frPyObjects(segmentation, height, width)
            rles += encoded if isinstance(encoded, list) else [encoded]
    return mask_utils.decode(mask_utils.merge(rles)).astype(np.uint8) * 255


def _area(annotation):
    if "area" in annotation:
        return annotation["area"]
    bbox = annotation.get("bbox", (0, 0, 0, 0))
    return bbox[2] * bbox[3]
