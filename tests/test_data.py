"""Training data: the training-set format loads, photo and mask share one transform, randomness is reproducible,
bad examples are named and skipped or fatal, missing columns are listed."""

import io
import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from photobg.data import (
    BadExample,
    Collate,
    EpochSampler,
    TrainExamples,
    load_train_dataset,
    write_synthetic_dataset,
)
from photobg.models import write_test_model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "shapes", 8, (72, 48), seed=3, shards=2)


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_training_set_format_loads_every_way(shapes):
    by_folder = load_train_dataset(train_data_dir=str(shapes))
    by_files = load_train_dataset(dataset_name=f"{shapes}/data/*.parquet")
    plain = datasets.load_dataset("parquet", data_files=f"{shapes}/data/*.parquet")["train"]
    assert len(by_folder) == len(by_files) == len(plain) == 8
    assert by_folder["id"] == plain["id"]
    assert load_train_dataset(train_data_dir=str(shapes), max_train_samples=3, seed=0)["id"] != by_folder["id"][:3]


def test_photo_and_mask_share_the_crop_and_flip(shapes):
    examples = TrainExamples(load_train_dataset(train_data_dir=str(shapes)), resolution=40, random_flip=True, seed=1)
    flips = set()
    for epoch in range(4):
        examples.epoch = epoch
        for k in range(len(examples)):
            item = examples[k]
            assert item["pixel_values"].shape == (3, 40, 40) and item["object_mask"].shape == (1, 40, 40)
            assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
            # The drawn object has one flat colour: where the mask says object, the photo has that colour.
            inside = item["object_mask"][0] == 1
            colours = item["pixel_values"][:, inside]
            assert inside.any() and (colours - colours.mean(1, keepdim=True)).abs().max() < 0.05
            flips.add(float(item["pixel_values"].sum()))
    assert len(flips) > len(examples)  # crops and flips change across epochs


def test_an_example_depends_only_on_seed_epoch_and_index(shapes):
    dataset = load_train_dataset(train_data_dir=str(shapes))
    a = TrainExamples(dataset, resolution=32, random_flip=True, proportion_empty_prompts=0.5, seed=5)
    b = TrainExamples(dataset, resolution=32, random_flip=True, proportion_empty_prompts=0.5, seed=5)
    a.epoch = b.epoch = 2
    for k in (0, 5, 7, 5):
        assert torch.equal(a[k]["pixel_values"], b[k]["pixel_values"]) and a[k]["caption"] == b[k]["caption"]
    b.epoch = 3
    assert any(not torch.equal(a[k]["pixel_values"], b[k]["pixel_values"]) for k in range(8))
    sampler = EpochSampler(8, seed=5)
    orders = []
    for epoch in (0, 1, 0):
        sampler.epoch = epoch
        orders.append(list(sampler))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[0]) == list(range(8))


def test_captions_empty_prompts_and_lists(tmp_path):
    photo, mask = Image.new("RGB", (16, 16), "red"), Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    rows = {"image": [png(photo)] * 40, "conditioning_image": [png(mask)] * 40, "text": [["a cat", "a dog"]] * 40}
    dataset = datasets.Dataset.from_dict(rows)
    captions = {TrainExamples(dataset, resolution=16)[k]["caption"] for k in range(40)}
    assert captions == {"a cat", "a dog"}
    empty = TrainExamples(dataset, resolution=16, proportion_empty_prompts=1.0)
    assert {empty[k]["caption"] for k in range(10)} == {""}
    half = TrainExamples(dataset, resolution=16, proportion_empty_prompts=0.5)
    share = np.mean([half[k]["caption"] == "" for k in range(40)])
    assert 0.2 < share < 0.8


def bad_dataset():
    photo, mask = Image.new("RGB", (16, 16), "red"), Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    rows = {
        "id": ["good-0", "unreadable", "wrong-size", "empty-mask", "good-4"],
        "image": [png(photo), b"not an image", png(photo), png(photo), png(photo)],
        "conditioning_image": [
            png(mask),
            png(mask),
            png(mask.resize((8, 8))),
            png(Image.new("L", (16, 16))),
            png(mask),
        ],
        "text": ["a"] * 5,
    }
    return datasets.Dataset.from_dict(rows)


def test_bad_examples_are_named_and_skipped(caplog):
    examples = TrainExamples(bad_dataset(), resolution=16, bad_examples="skip")
    with caplog.at_level(logging.WARNING, logger="photobg.data"):
        names = [examples[k]["name"] for k in range(5)]
    assert names == ["'good-0' (index 0)"] + ["'good-4' (index 4)"] * 4
    text = caplog.text
    assert "'unreadable' (index 1): not a readable image" in text
    assert "'wrong-size' (index 2): its object mask is (8, 8) but its image is (16, 16)" in text
    assert "'empty-mask' (index 3): its object mask is empty" in text


@pytest.mark.parametrize(("index", "message"), [(1, "'unreadable'"), (2, "'wrong-size'"), (3, "'empty-mask'")])
def test_bad_examples_can_be_fatal(index, message):
    examples = TrainExamples(bad_dataset(), resolution=16, bad_examples="fail")
    with pytest.raises(BadExample, match=message):
        examples[index]


def test_missing_columns_and_sources_are_named(shapes, tmp_path):
    with pytest.raises(ValueError, match=r"--image_column 'photo': no such column .* image, conditioning_image, text"):
        load_train_dataset(train_data_dir=str(shapes), columns=("photo", "conditioning_image", "text"))
    with pytest.raises(ValueError, match="--conditioning_image_column 'mask'"):
        load_train_dataset(train_data_dir=str(shapes), columns=("image", "mask", "text"))
    with pytest.raises(ValueError, match="--train_data_dir './no-such-folder'"):
        load_train_dataset(train_data_dir="./no-such-folder")


def test_collate_tokenizes_like_the_pipeline(shapes, tmp_path):
    from transformers import AutoTokenizer

    model = write_test_model(tmp_path / "model", "tiny-inpainting", with_controlnet=False)
    tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    examples = TrainExamples(load_train_dataset(train_data_dir=str(shapes)), resolution=32)
    batch = Collate(tokenizer)([examples[0], examples[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["object_mask"].shape == (2, 1, 32, 32)
    expected = tokenizer(batch["captions"], padding="max_length", max_length=77, truncation=True).input_ids
    assert batch["input_ids"].tolist() == expected


# ----------------------------------------------------------------------------- one mask reader, one crop recipe


def mask_files(folder):
    """One object (a soft-edged square) drawn as each common kind of mask file; {kind: path}."""
    object_mask = np.zeros((16, 16), np.uint8)
    object_mask[4:12, 3:11] = 255
    object_mask[4:12, 11] = 100  # a soft edge
    inside = object_mask > 0
    palette = Image.fromarray(inside.astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0])  # a red object on black
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = object_mask
    masks = {
        "opaque-rgba": Image.fromarray(
            np.dstack([np.repeat(object_mask[..., None], 3, 2), np.full((16, 16), 255, np.uint8)])
        ),
        "transparent-rgba": Image.fromarray(np.dstack([np.full((16, 16, 3), 90, np.uint8), object_mask])),
        "labels-0-1": Image.fromarray(inside.astype(np.uint8), "L"),
        "16-bit": Image.fromarray(object_mask.astype(np.uint16) * 257),
        "palette": palette,
        "red-on-black": Image.fromarray(red),
    }
    paths = {}
    for kind, mask in masks.items():
        paths[kind] = folder / f"{kind}.png"
        mask.save(paths[kind])
    return paths


def test_training_reads_every_kind_of_mask_file_as_inference_does(tmp_path):
    from photobg.masks import load_object_mask, object_mask_to_tensor

    paths = mask_files(tmp_path)
    photo = png(Image.new("RGB", (16, 16), "gray"))
    rows = {
        "image": [{"bytes": photo, "path": None}] * len(paths),
        "conditioning_image": [{"bytes": path.read_bytes(), "path": None} for path in paths.values()],
        "text": ["an object"] * len(paths),
    }
    features = datasets.Features(
        {"image": datasets.Image(), "conditioning_image": datasets.Image(), "text": datasets.Value("string")}
    )
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "masks.parquet"))
    examples = TrainExamples(load_train_dataset(dataset_name=str(tmp_path / "masks.parquet")), resolution=16)
    assert Image.open(paths["16-bit"]).mode.startswith("I")
    for k, (kind, path) in enumerate(paths.items()):
        item = examples[k]
        at_inference = object_mask_to_tensor(load_object_mask(path), (16, 16))[0]
        assert torch.equal(item["object_mask"], at_inference), kind
        assert item["bad"] == "", kind  # none is skipped as empty or full
        outside = torch.ones(16, 16, dtype=torch.bool)
        outside[4:12, 3:12] = False
        assert (at_inference[0, 4:12, 3:11] == 1).all() and (at_inference[0, outside] == 0).all(), kind


def test_the_authors_crop_recipe_averages_areas_and_exposes_the_crop():
    from photobg.data import Crop, transform_pair

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    object_mask = Image.fromarray(rng.integers(0, 256, (60, 90), dtype=np.uint8))
    # As 768 -> 512: the short side resized to 1.5 x the crop, then a random crop.
    image, mask, crop = transform_pair(photo, object_mask, 32, np.random.default_rng(1), short_side=48)
    assert isinstance(crop, Crop) and crop.original_size == (90, 60) and crop.resized_size == (72, 48)
    left, top, right, bottom = crop.box
    assert right - left == bottom - top == 32 and not crop.flipped
    # Area averaging (Pillow's BOX filter, OpenCV's INTER_AREA), for the photo and the mask alike.
    for original, cropped in ((photo, image), (object_mask, mask)):
        expected = original.resize((72, 48), Image.BOX).crop(crop.box)
        assert np.array_equal(np.asarray(cropped), np.asarray(expected))
        assert not np.array_equal(
            np.asarray(cropped), np.asarray(original.resize((72, 48), Image.BILINEAR).crop(crop.box))
        )
    positions = {
        transform_pair(photo, object_mask, 32, np.random.default_rng(s), short_side=48)[2].box for s in range(20)
    }
    assert len(positions) > 5  # the crop moves over the whole resized photo


def test_the_crop_gives_sdxl_time_ids_in_the_frame_the_model_sees(tmp_path):
    from photobg.data import Crop, TrainExamples, load_train_dataset, write_synthetic_dataset

    crop = Crop(original_size=(90, 60), resized_size=(72, 48), box=(10, 6, 42, 38), flipped=False)
    assert crop.as_tensor().tolist() == [60, 90, 6, 10]  # original (height, width), crop (top, left)
    mirrored = Crop(original_size=(90, 60), resized_size=(72, 48), box=(10, 6, 42, 38), flipped=True)
    assert mirrored.top_left == (6, 72 - 42)  # flipped: the left edge is the mirrored right edge
    # Each example carries its own crop: photos of 40x32, short side 48, 32 px crops.
    data = write_synthetic_dataset(tmp_path / "shapes", 4, (40, 32), seed=0)
    examples = TrainExamples(load_train_dataset(train_data_dir=str(data)), resolution=32, resize_short_side=48)
    crops = [examples[k]["crop"].tolist() for k in range(4)]
    assert all(c[:2] == [32, 40] and 0 <= c[2] <= 16 and 0 <= c[3] <= 28 for c in crops)
    assert len({tuple(c) for c in crops}) > 1
