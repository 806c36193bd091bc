"""`photobg prepare`: every source layout, every kind of bad input, the output format, determinism, resume."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_photo
from PIL import Image
from prepare_fixtures import (
    SIZE,
    make_coco,
    make_layout,
    rotated_jpeg,
    truncated_jpeg_bytes,
    uint16_image,
    write_pair,
)

from photobg.cli import main
from photobg.masks import load_object_mask
from photobg.prepare import build
from photobg.prepare.sources import detect_layout


def prepare(*args):
    """Run `photobg prepare ARGS --quiet`; returns the exit status."""
    return main(["prepare", *map(str, args), "--quiet"])


def read_rows(output):
    """{id: row} of a prepared folder, images decoded with PIL."""
    rows = {}
    for path in sorted((output / "data").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            row["image_bytes"] = row["image"]["bytes"]
            row["image"] = Image.open(io.BytesIO(row["image_bytes"]))
            row["mask_bytes"] = row["conditioning_image"]["bytes"]
            row["conditioning_image"] = Image.open(io.BytesIO(row["mask_bytes"]))
            rows[row["id"]] = row
    return rows


def skipped(output):
    """{file name: reason} of everything left out."""
    lines = (output / ".prepare" / "skipped.jsonl").read_text().splitlines()
    return {json.loads(line)["file"].rsplit("/", 1)[-1]: json.loads(line)["reason"] for line in lines}


def notes(output):
    summary = json.loads((output / ".prepare" / "summary.json").read_text())
    return {note: group["files"] for note, group in summary["notes"].items()}


def shard_bytes(output):
    return [p.read_bytes() for p in sorted((output / "data").glob("*.parquet"))]


def assert_close(image, reference, tolerance=16):  # JPEG on these small noisy drawings is far from exact
    difference = np.abs(np.asarray(image, np.int16) - np.asarray(reference.convert(image.mode), np.int16))
    assert difference.mean() < tolerance


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", ["duts", "dis5k", "hrsod", "msra", "ecssd", "hkuis"])
def test_published_layouts_are_detected_and_read(tmp_path, layout):
    folder, expected = make_layout(tmp_path / "data", layout)
    assert detect_layout(folder) == layout
    assert prepare(folder, "--output", tmp_path / "out") == 0
    rows = read_rows(tmp_path / "out")
    assert set(rows) == {f"{layout}/{stem}" for stem in expected}  # the training split only
    for stem, (_, mask, image_file, mask_file) in expected.items():
        row = rows[f"{layout}/{stem}"]
        assert (row["source"], row["text"], row["width"], row["height"]) == (layout, "", *SIZE)
        assert row["image"].mode == "RGB" and row["conditioning_image"].mode == "L"
        assert np.array_equal(np.asarray(row["conditioning_image"]), np.asarray(mask))
        assert row["image_bytes"] == image_file.read_bytes()  # unchanged files are not re-encoded
        assert row["mask_bytes"] == mask_file.read_bytes()


def test_named_layout_and_test_split_folder(tmp_path):
    folder, _ = make_layout(tmp_path / "data", "duts")
    assert prepare("--layout", "duts", folder / "DUTS-TE", "--output", tmp_path / "out") == 0
    assert set(read_rows(tmp_path / "out")) == {"duts/test_000"}
    with pytest.raises(SystemExit, match="not in the DIS5K layout"):
        prepare("--layout", "dis5k", folder, "--output", tmp_path / "other")


def test_unknown_layout_and_empty_source_folder_stop_before_writing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no known dataset layout"):
        prepare(tmp_path / "empty", "--output", tmp_path / "out")
    (tmp_path / "images").mkdir()
    write_pair(tmp_path / "other" / "a.jpg", tmp_path / "masks" / "a.png")
    with pytest.raises(SystemExit, match=r"images: holds no image files"):
        prepare("--images", tmp_path / "images", "--masks", tmp_path / "masks", "--output", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    """A generic images/masks pair of folders with one file of every awkward kind, prepared once."""
    root = tmp_path_factory.mktemp("bad")
    images, masks = root / "images", root / "masks"
    photo, mask = write_pair(images / "good.jpg", masks / "good.png", seed=1)
    (images / "corrupt.jpg").write_bytes(b"not a jpeg at all" * 20)
    mask.save(masks / "corrupt.png")
    (images / "truncated.jpg").write_bytes(truncated_jpeg_bytes(photo))
    mask.save(masks / "truncated.png")
    photo.save(images / "small_mask.jpg")
    mask.resize((SIZE[0] // 2, SIZE[1] // 2), Image.BILINEAR).save(masks / "small_mask.png")
    photo.save(images / "square_mask.jpg")
    mask.resize((30, 30)).save(masks / "square_mask.png")
    photo.save(images / "empty_mask.jpg")
    Image.new("L", SIZE, 0).save(masks / "empty_mask.png")
    photo.save(images / "full_mask.jpg")
    Image.new("L", SIZE, 255).save(masks / "full_mask.png")
    photo.save(images / "rgb_mask.jpg")
    mask.convert("RGB").save(masks / "rgb_mask.png")
    photo.save(images / "mask16.jpg")
    uint16_image(mask).save(masks / "mask16.png")
    photo.save(images / "alpha_mask.jpg")
    black = Image.new("L", SIZE, 0)
    Image.merge("RGBA", (black, black, black, mask)).save(masks / "alpha_mask.png")
    photo.save(images / "no_mask.jpg")
    mask.save(masks / "no_image.png")
    photo.save(images / "dup.jpg")
    photo.save(images / "dup.png")
    mask.save(masks / "dup.png")
    rotated_jpeg(images / "exif_upright_mask.jpg", photo)
    mask.save(masks / "exif_upright_mask.png")
    rotated_jpeg(images / "exif_stored_mask.jpg", photo)
    mask.transpose(Image.Transpose.ROTATE_90).save(masks / "exif_stored_mask.png")
    photo.convert("CMYK").save(images / "cmyk.jpg")
    mask.save(masks / "cmyk.png")
    photo.convert("L").save(images / "gray.jpg")
    mask.save(masks / "gray.png")
    uint16_image(photo.convert("L")).save(images / "gray16.png")
    mask.save(masks / "gray16.png")
    (images / "notes.txt").write_text("not an image: ignored")
    output = root / "out"
    assert prepare("--images", images, "--masks", masks, "--output", output, "--shard-size", 4) == 0
    return {"photo": photo, "mask": mask, "output": output, "rows": read_rows(output)}


KEPT = {
    "good",
    "small_mask",
    "rgb_mask",
    "mask16",
    "alpha_mask",
    "exif_upright_mask",
    "exif_stored_mask",
    "cmyk",
    "gray",
    "gray16",
}
LEFT_OUT = {
    "corrupt.jpg": "unreadable image",
    "truncated.jpg": "unreadable image",
    "square_mask.png": "mask of another size than its image and aspect ratio",
    "empty_mask.png": "empty mask",
    "full_mask.png": "mask covers the whole image",
    "no_mask.jpg": "image without a mask",
    "no_image.png": "mask without an image",
    "dup.jpg": "duplicate stem",
}


def test_bad_inputs_are_left_out_by_file_with_the_reason(bad_folder):
    assert set(bad_folder["rows"]) == {f"images/{stem}" for stem in KEPT}
    assert skipped(bad_folder["output"]) == LEFT_OUT
    card = (bad_folder["output"] / "README.md").read_text()
    for name, reason in LEFT_OUT.items():
        assert f"`{name}`" in card and reason in card


def test_masks_in_every_format_give_the_same_object_mask(bad_folder):
    reference = np.asarray(bad_folder["mask"])
    for stem in ("good", "rgb_mask", "mask16", "alpha_mask", "cmyk", "gray", "gray16", "exif_upright_mask"):
        assert np.array_equal(np.asarray(bad_folder["rows"][f"images/{stem}"]["conditioning_image"]), reference), stem
    resized = np.asarray(bad_folder["rows"]["images/small_mask"]["conditioning_image"])
    assert np.mean((resized >= 128) == (reference >= 128)) > 0.95
    assert "images/small_mask" in str(notes(bad_folder["output"])["mask of another size resized to its image"])


def test_exif_rotation_cmyk_and_grayscale_become_upright_rgb(bad_folder):
    rows, photo = bad_folder["rows"], bad_folder["photo"]
    for stem in ("exif_upright_mask", "exif_stored_mask", "cmyk"):
        assert rows[f"images/{stem}"]["image"].mode == "RGB"
        assert (rows[f"images/{stem}"]["width"], rows[f"images/{stem}"]["height"]) == SIZE
        assert_close(rows[f"images/{stem}"]["image"], photo)
    for stem in ("gray", "gray16"):
        assert rows[f"images/{stem}"]["image"].mode == "RGB"
        assert_close(rows[f"images/{stem}"]["image"], photo.convert("L").convert("RGB"))
    # A mask drawn on the stored (unrotated) pixels is rotated with its image.
    stored = np.asarray(rows["images/exif_stored_mask"]["conditioning_image"])
    assert np.array_equal(stored, np.asarray(bad_folder["mask"]))
    converted = notes(bad_folder["output"])
    assert len(converted["EXIF orientation applied"]) == 2
    assert converted["CMYK image converted to RGB"][0].endswith("cmyk.jpg")
    assert converted["16-bit grayscale image converted to RGB"][0].endswith("gray16.png")


def test_mask_mismatch_skip(tmp_path):
    photo, mask = write_pair(tmp_path / "images" / "a.jpg", tmp_path / "masks" / "a.png")
    photo.save(tmp_path / "images" / "b.jpg")
    mask.resize((24, 20)).save(tmp_path / "masks" / "b.png")
    args = ("--images", tmp_path / "images", "--masks", tmp_path / "masks", "--mask-mismatch", "skip")
    assert prepare(*args, "--output", tmp_path / "out") == 0
    assert set(read_rows(tmp_path / "out")) == {"images/a"}
    assert skipped(tmp_path / "out") == {"b.png": "mask of another size than its image"}


def test_load_object_mask_rules(tmp_path):
    _, mask = make_photo(seed=3)
    reference = np.asarray(mask)
    red = Image.merge("RGB", (mask, Image.new("L", mask.size), Image.new("L", mask.size)))
    labels = Image.fromarray((reference >= 128).astype(np.uint8))
    opaque = Image.merge("RGBA", (mask, mask, mask, Image.new("L", mask.size, 255)))
    for name, picture in (("red", red), ("opaque_rgba", opaque), ("la", mask.convert("LA"))):
        picture.save(tmp_path / f"{name}.png")
        assert np.array_equal(np.asarray(load_object_mask(tmp_path / f"{name}.png")), reference), name
    labels.save(tmp_path / "labels.png")
    assert np.array_equal(np.asarray(load_object_mask(tmp_path / "labels.png")), (reference >= 128) * 255)
    with pytest.raises(ValueError, match="broken.png"):
        (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
        load_object_mask(tmp_path / "broken.png")


# ----------------------------------------------------------------------------- COCO and cutouts


def test_coco_polygon_and_rle_instances(tmp_path):
    instances, images, captions, expected = make_coco(tmp_path / "coco")
    args = ("--coco", instances, "--coco-images", images, "--coco-captions", captions, "--coco-select", "category")
    assert prepare(*args, "--output", tmp_path / "out") == 0
    rows = read_rows(tmp_path / "out")
    assert set(rows) == {"coco/1", "coco/2"}
    box = np.asarray(rows["coco/1"]["conditioning_image"]) >= 128  # polygon: rasterised rectangle
    assert (box & expected[1]).sum() / (box | expected[1]).sum() > 0.9
    assert not box[:, 32:].any()  # the smaller instance of another category is not taken
    rle = np.asarray(rows["coco/2"]["conditioning_image"]) >= 128  # compressed + uncompressed RLE, one category
    assert np.array_equal(rle, expected[2])
    assert rows["coco/1"]["text"] in ("A dog on a rug.", "A brown dog lying down.")
    assert rows["coco/2"]["text"] == "Two cups on a table."
    assert skipped(tmp_path / "out") == {
        "000000000003.jpg": "COCO: no instance covers 5% of the image",
        "000000000004.jpg": "COCO: no instance covers 5% of the image",
        "000000000005.jpg": "image file missing",
        "000000000006.jpg": "invalid COCO segmentation",
    }
    assert prepare(*args[:4], "--output", tmp_path / "largest") == 0  # largest: the larger RLE instance only
    largest = np.asarray(read_rows(tmp_path / "largest")["coco/2"]["conditioning_image"]) >= 128
    assert largest.sum() == 20 * 18 and not largest[:, :24].any()


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"file": "a.jpg"}]', "not a COCO instances file"),
        ('{"images": [], "annotations": [{"image_id": 1, "caption": "x"}], "categories": []}', "captions file"),
        ('{"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}], "categories": []}', "segmentation"),
        ("not json {", "not JSON"),
    ],
)
def test_non_coco_annotation_file_stops_before_writing(tmp_path, content, message):
    (tmp_path / "images").mkdir()
    (tmp_path / "ann.json").write_text(content)
    with pytest.raises(SystemExit, match=message) as error:
        prepare("--coco", tmp_path / "ann.json", "--coco-images", tmp_path / "images", "--output", tmp_path / "out")
    assert "ann.json" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_rgba_cutouts(tmp_path):
    photo, mask = make_photo(seed=4)
    cutouts = tmp_path / "cutouts"
    cutouts.mkdir()
    Image.merge("RGBA", (*photo.split(), mask)).save(cutouts / "cup.png")
    photo.save(cutouts / "opaque.jpg")
    Image.merge("RGBA", (*photo.split(), Image.new("L", photo.size, 0))).save(cutouts / "clear.png")
    assert prepare("--cutouts", cutouts, "--output", tmp_path / "out") == 0
    rows = read_rows(tmp_path / "out")
    assert set(rows) == {"cutouts/cup"}
    assert rows["cutouts/cup"]["image"].mode == "RGB"
    assert np.array_equal(np.asarray(rows["cutouts/cup"]["image"]), np.asarray(photo))
    assert np.array_equal(np.asarray(rows["cutouts/cup"]["conditioning_image"]), np.asarray(mask))
    assert skipped(tmp_path / "out") == {"opaque.jpg": "cutout without an alpha channel", "clear.png": "empty mask"}


# ----------------------------------------------------------------------------- output, mixing, resume


@pytest.fixture()
def two_sources(tmp_path):
    duts, _ = make_layout(tmp_path / "duts", "duts", count=6)
    images, masks = tmp_path / "photos", tmp_path / "masks"
    for i in range(4):
        write_pair(images / f"p{i}.png", masks / f"p{i}.png", seed=10 + i)
    return [duts, "--images", images, "--masks", masks]


def test_counts_weights_and_resize(tmp_path, two_sources):
    args = [*two_sources, "--count", "duts=2", "--weight", "images=1.5", "--max-side", "24"]
    assert prepare(*args, "--output", tmp_path / "out") == 0
    rows = read_rows(tmp_path / "out")
    assert sum(r["source"] == "duts" for r in rows.values()) == 2
    assert sum(r["source"] == "images" for r in rows.values()) == 6  # 4 + a random half repeated
    assert sum(i.endswith("~r1") for i in rows) == 2
    for row in rows.values():
        assert row["image"].size == row["conditioning_image"].size == (row["width"], row["height"]) == (24, 20)
    assert prepare(*two_sources, "--max-short-side", "30", "--output", tmp_path / "short") == 0
    assert {r["image"].size for r in read_rows(tmp_path / "short").values()} == {(36, 30)}
    with pytest.raises(SystemExit, match="unknown sources"):
        prepare(*two_sources, "--count", "coco=5", "--output", tmp_path / "bad")


def test_deterministic_for_a_seed_and_the_same_with_workers(tmp_path, two_sources):
    base = [*two_sources, "--shard-size", "3"]
    assert prepare(*base, "--output", tmp_path / "a") == 0
    assert prepare(*base, "--num-proc", "2", "--output", tmp_path / "b") == 0
    assert prepare(*base, "--seed", "1", "--output", tmp_path / "c") == 0
    assert len(shard_bytes(tmp_path / "a")) == 4
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    order = [pq.read_table(p).column("id").to_pylist() for p in sorted((tmp_path / "a" / "data").glob("*.parquet"))]
    reseeded = [pq.read_table(p).column("id").to_pylist() for p in sorted((tmp_path / "c" / "data").glob("*.parquet"))]
    assert sorted(sum(order, [])) == sorted(sum(reseeded, [])) and order != reseeded


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path, two_sources, monkeypatch):
    base = [*two_sources, "--shard-size", "3"]
    assert prepare(*base, "--output", tmp_path / "whole") == 0
    real_write = build._write_shard
    calls = []

    def write_then_die(state, index, *rest):
        if len(calls) == 2:  # the third shard: leave a half-written file behind and die
            (state / "shards" / f"{index:05d}.parquet.tmp").write_bytes(b"PAR1 half")
            raise KeyboardInterrupt
        calls.append(index)
        real_write(state, index, *rest)

    monkeypatch.setattr(build, "_write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(*base, "--output", tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "data").exists()  # no shard looks complete before all are
    assert not (tmp_path / "resumed" / "README.md").exists()
    monkeypatch.setattr(build, "_write_shard", real_write)
    written = []
    monkeypatch.setattr(
        build, "_write_shard", lambda state, index, *rest: (written.append(index), real_write(state, index, *rest))
    )
    assert prepare(*base, "--output", tmp_path / "resumed") == 0
    assert written == [2, 3]  # only the shards not finished before
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "whole")
    assert prepare(*base, "--output", tmp_path / "resumed") == 0 and written == [2, 3]  # complete: nothing to do


def test_other_options_need_overwrite(tmp_path, two_sources):
    assert prepare(*two_sources, "--output", tmp_path / "out") == 0
    with pytest.raises(SystemExit, match="--overwrite"):
        prepare(*two_sources, "--max-side", "24", "--output", tmp_path / "out")
    assert prepare(*two_sources, "--max-side", "24", "--overwrite", "--output", tmp_path / "out") == 0
    assert {r["width"] for r in read_rows(tmp_path / "out").values()} == {24}
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("someone's files")
    with pytest.raises(SystemExit, match="not written by `photobg prepare`"):
        prepare(*two_sources, "--output", tmp_path / "theirs")


def test_load_dataset_reads_the_folder_with_its_features(tmp_path, two_sources):
    import datasets

    assert prepare(*two_sources, "--shard-size", "4", "--output", tmp_path / "out") == 0
    cache = str(tmp_path / "hf-cache")
    from_folder = datasets.load_dataset(str(tmp_path / "out"), split="train", cache_dir=cache)
    files = f"{tmp_path / 'out'}/data/*.parquet"
    from_parquet = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache)
    expected = ["image", "conditioning_image", "text", "source", "id", "width", "height"]
    for dataset in (from_folder, from_parquet):
        assert dataset.column_names == expected and len(dataset) == 10
        assert isinstance(dataset.features["image"], datasets.Image)
        assert isinstance(dataset.features["conditioning_image"], datasets.Image)
        assert dataset.features["text"] == datasets.Value("string")
        assert dataset[0]["image"].mode == "RGB" and dataset[0]["conditioning_image"].mode == "L"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| duts | duts | 6 | 6 | 6 | 0 |" in card and "| images | images | 4 | 4 | 4 | 0 |" in card


def test_dry_run_writes_nothing(tmp_path, two_sources, capsys):
    assert main(["prepare", *map(str, two_sources), "--dry-run", "--output", str(tmp_path / "out")]) == 0
    assert "10 examples planned" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_evaluate_reads_a_prepared_set_as_a_benchmark(tmp_path):
    from photobg.evaluate.data import Benchmark

    folder, expected = make_layout(tmp_path / "data", "duts", count=2)
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"file_name": "duts_000.jpg", "text": "a vase"}) + "\n")
    assert prepare(folder, "--captions", captions, "--output", tmp_path / "out") == 0
    benchmark = Benchmark(tmp_path / "out", resolution=0)
    assert benchmark.ids == ["duts/duts_000", "duts/duts_001"]
    sample = benchmark[0]
    assert sample.prompt == "a vase" and sample.image.size == SIZE
    assert np.array_equal(np.asarray(sample.object_mask), np.asarray(expected["duts_000"][1]))
