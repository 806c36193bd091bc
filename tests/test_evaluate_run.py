"""`photobg evaluate` end to end on the tiny model, its inputs (benchmarks, model specs) and the segmenters it
uses (SAM with a tiny random SamModel, masks you bring)."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from photobg import cli
from photobg.data import training_set_features
from photobg.evaluate.data import Benchmark, parse_model_spec, parse_model_specs
from photobg.evaluate.metrics import expansion_metrics
from photobg.segment import SegmenterUnavailable, get_segmenter, sam_prompt, segment_image

# ----------------------------------------------------------------------------- model specs


@pytest.mark.parametrize(
    ("text", "name", "model", "scale", "controlnet"),
    [
        ("tiny-inpainting", "tiny-inpainting", "tiny-inpainting", 1.0, None),
        ("tiny-inpainting@scale=0", "tiny-inpainting@scale=0", "tiny-inpainting", 0.0, None),
        (
            "yahoo-inc/photo-background-generation@name=SI2,scale=0",
            "SI2",
            "yahoo-inc/photo-background-generation",
            0,
            None,
        ),
        ("name=Ours,model=base/sd2,controlnet=c.pth,scale=0.5", "Ours", "base/sd2", 0.5, "c.pth"),
        ("./models/my@model@name=x", "x", "./models/my@model", 1.0, None),
    ],
)
def test_model_specs(text, name, model, scale, controlnet):
    spec = parse_model_spec(text)
    assert (spec.name, spec.model, spec.scale, spec.controlnet) == (name, model, scale, controlnet)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tiny-inpainting@steps=3", "not KEY=VALUE"),
        ("scale=0", "no model"),
        ("tiny-inpainting@scale=big", "scale must be a number"),
        ("tiny-inpainting@model=other", "given twice"),
    ],
)
def test_bad_model_specs(text, message):
    with pytest.raises(ValueError, match=message):
        parse_model_spec(text)


def test_a_spec_takes_a_recipe_and_its_lora():
    spec = parse_model_spec("m@name=Lightning4,recipe=sdxl-lightning-4,lora=l.safetensors:0.8")
    assert (spec.recipe, spec.lora) == ("sdxl-lightning-4", "l.safetensors:0.8")
    assert spec.scheduler_choice() == ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"})
    assert spec.sampling(20, 7.5) == {"num_inference_steps": 4, "guidance_scale": 0}
    assert parse_model_spec("m@recipe=dmd2-4").sampling(20, 7.5)["timesteps"] == [999, 749, 499, 249]
    assert parse_model_spec("m@recipe=tcd").sampling(20, 7.5)["eta"] == 0.3
    plain = parse_model_spec("m@name=Ours")
    assert plain.sampling(20, 7.5) == {"num_inference_steps": 20, "guidance_scale": 7.5}
    assert "recipe" not in plain.generation_settings()  # runs made before recipes keep their settings
    with pytest.raises(ValueError, match="unknown recipe 'nope'; choose one of authors, "):
        parse_model_spec("m@recipe=nope")


def test_a_recipe_row_samples_with_the_recipe(folder_benchmark, tmp_path, monkeypatch, capsys):
    from photobg.evaluate import runner

    calls = []
    original = runner.generate_image

    def recorded(pipe, sample, spec, seed, steps, guidance):
        calls.append((type(pipe.scheduler).__name__, pipe.scheduler.config.timestep_spacing, spec.sampling(steps, 7)))
        return original(pipe, sample, spec, seed, steps, guidance)

    monkeypatch.setattr(runner, "generate_image", recorded)
    argv = ["evaluate", "--data", str(folder_benchmark), "--output-dir", str(tmp_path), "--resolution", "0"]
    argv += ["--model", "tiny-sdxl-inpainting@name=L2,recipe=sdxl-lightning-2", "--metrics", "expansion"]
    assert cli.main([*argv, "--segmenter", "threshold", "--steps", "3"]) == 0
    # No LoRA in the spec: the generate command's warning, as one line.
    assert "warning: recipe sdxl-lightning-2 expects the LoRA sdxl_lightning_2step_lora.safetensors of " in (
        capsys.readouterr().err
    )
    assert calls and set(calls[0][:2]) == {"EulerDiscreteScheduler", "trailing"}
    assert calls[0][2] == {"num_inference_steps": 2, "guidance_scale": 0}
    settings = json.loads((tmp_path / "generated" / "L2" / "settings.json").read_text())
    assert (settings["recipe"], settings["steps"], settings["guidance"]) == ("sdxl-lightning-2", 2, 0)


def test_model_names_must_differ():
    with pytest.raises(ValueError, match="share the output folder"):
        parse_model_specs(["a/b@name=x y", "c@name=x_y"])


# ----------------------------------------------------------------------------- benchmarks

W, H = 64, 48


def bright_object_photo(seed):
    """A bright ellipse (the object) on a dark textured background, and its exact binary mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    inside = ((xx - 28 - 4 * seed) / 14) ** 2 + ((yy - 24) / 11) ** 2 <= 1
    photo = np.where(inside[..., None], 230, rng.integers(0, 100, (H, W, 3)))
    return Image.fromarray(photo.astype(np.uint8)), Image.fromarray(inside.astype(np.uint8) * 255, "L")


@pytest.fixture(scope="module")
def folder_benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    lines = []
    for k in range(3):
        photo, mask = bright_object_photo(k)
        photo.save(root / "images" / f"item{k}.png")
        mask.save(root / "masks" / f"item{k}.png")
        lines.append(json.dumps({"id": f"item{k}", "text": "a bottle on a table" if k != 1 else "a photo of a cat"}))
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_folder_benchmark(folder_benchmark):
    bench = Benchmark(folder_benchmark, resolution=32, limit=2)
    assert bench.ids == ["item0", "item1"] and len(bench) == 2
    sample = bench[1]
    assert (sample.id, sample.prompt) == ("item1", "a photo of a cat")
    assert sample.image.size == sample.object_mask.size == (32, 24)  # longer side 32
    assert sample.image.mode == "RGB" and sample.object_mask.mode == "L"
    assert Benchmark(folder_benchmark, resolution=0)[0].image.size == (W, H)


def test_folder_benchmark_cutouts_and_missing_masks(tmp_path):
    (tmp_path / "images").mkdir()
    photo, mask = bright_object_photo(0)
    cutout = photo.convert("RGBA")
    cutout.putalpha(mask)
    cutout.save(tmp_path / "images" / "cutout.png")
    photo.save(tmp_path / "images" / "plain.jpg")
    bench = Benchmark(tmp_path, resolution=0, default_prompt="a studio shot")
    sample = bench[bench.ids.index("cutout")]
    np.testing.assert_array_equal(np.asarray(sample.object_mask), np.asarray(mask))
    assert sample.prompt == "a studio shot"
    with pytest.raises(ValueError, match=r"plain\.jpg: no mask .*masks/plain\.png"):
        bench[bench.ids.index("plain")]


def test_not_a_benchmark(tmp_path):
    with pytest.raises(ValueError, match="not a benchmark"):
        Benchmark(tmp_path)


def test_prepared_dataset_benchmark(tmp_path):
    import datasets

    photos = [bright_object_photo(k) for k in range(2)]
    features = training_set_features()
    table = {
        "image": [p for p, _ in photos],
        "conditioning_image": [m for _, m in photos],
        "text": ["a cat on a beach", ""],
        "source": ["test", "test"],
        "id": ["duts/b", "duts/a"],
        "width": [W, W],
        "height": [H, H],
    }
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(table, features=features).to_parquet(
        str(tmp_path / "data" / "train-00000-of-00001.parquet")
    )
    bench = Benchmark(tmp_path, resolution=0, default_prompt="fallback")
    assert bench.ids == ["duts/a", "duts/b"] and bench.file_names == ["duts_a", "duts_b"]
    assert bench[0].prompt == "fallback" and bench[1].prompt == "a cat on a beach"
    np.testing.assert_array_equal(np.asarray(bench[1].object_mask), np.asarray(photos[0][1]))
    np.testing.assert_array_equal(np.asarray(bench[1].image), np.asarray(photos[0][0]))


def test_prepared_dataset_with_an_unreadable_image(tmp_path):
    import datasets

    photo, mask = bright_object_photo(0)
    table = {"image": [{"bytes": b"", "path": None}, photo], "conditioning_image": [mask, mask], "id": ["bad", "ok"]}
    features = datasets.Features(
        image=datasets.Image(), conditioning_image=datasets.Image(), id=datasets.Value("string")
    )
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "data" / "test.parquet"))
    bench = Benchmark(tmp_path, resolution=0)
    with pytest.raises(ValueError, match=r"\[bad\]: not a readable image"):  # a sample that is skipped, named
        bench[0]
    assert bench[1].image.size == (W, H)


# ----------------------------------------------------------------------------- segmenters


def test_sam_segmenter(tiny_sam):
    segmenter = get_segmenter("sam", model=str(tiny_sam), device="cpu")
    photo, mask = bright_object_photo(0)
    found = segment_image(segmenter, photo, object_mask=mask)
    assert found.mode == "L" and found.size == photo.size
    assert set(np.unique(np.asarray(found))) <= {0, 255}
    again = segment_image(segmenter, photo, object_mask=mask)
    np.testing.assert_array_equal(np.asarray(found), np.asarray(again))  # deterministic
    empty = segment_image(segmenter, photo, object_mask=Image.new("L", photo.size))
    assert not np.asarray(empty).any()
    with pytest.raises(ValueError, match="needs the input object mask"):
        segment_image(segmenter, photo)


def test_sam_prompt():
    binary = np.zeros((40, 60), bool)
    binary[10:30, 5:45] = True  # a 40 x 20 box
    box, points = sam_prompt(binary, num_points=3)
    assert box == [5, 10, 44, 29]
    assert len(points) == 3 and len({tuple(p) for p in points}) == 3
    assert all(binary[y, x] for x, y in points)
    assert points[0][1] in (19, 20)  # the deepest point is on the box's middle row


def test_sam_without_weights_says_what_to_do(tmp_path):
    with pytest.raises(SegmenterUnavailable, match="'sam' segmenter could not load.*given-masks"):
        get_segmenter("sam", model=str(tmp_path / "no-such-sam"))


def test_given_masks(tmp_path):
    (tmp_path / "SI2").mkdir()
    photo, mask = bright_object_photo(0)
    mask.save(tmp_path / "SI2" / "item0_s0.png")
    segmenter = get_segmenter("given-masks", folder=tmp_path)
    np.testing.assert_array_equal(np.asarray(segment_image(segmenter, photo, key="SI2/item0_s0")), np.asarray(mask))
    with pytest.raises(ValueError, match=r"No mask for 'SI2/item1_s0': expected .*SI2/item1_s0\.png"):
        segment_image(segmenter, photo, key="SI2/item1_s0")
    with pytest.raises(ValueError, match=r"item0_s0\.png: mask is 64x48, its image is 32x32"):
        segment_image(segmenter, Image.new("RGB", (32, 32)), key="SI2/item0_s0")
    with pytest.raises(SegmenterUnavailable, match="needs a folder"):
        get_segmenter("given-masks", folder=tmp_path / "missing")


# ----------------------------------------------------------------------------- photobg evaluate


def evaluate(bench, output_dir, *extra):
    argv = ["evaluate", "--data", str(bench), "--output-dir", str(output_dir), "--resolution", "0", "--steps", "2"]
    argv += ["--model", "tiny-inpainting@name=SI2,scale=0", "--model", "tiny-inpainting@name=Ours,scale=1"]
    return cli.main(argv + list(extra))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def evaluated(folder_benchmark, tmp_path_factory, tiny_clip_folder):
    output_dir = tmp_path_factory.mktemp("eval")
    evaluate(
        folder_benchmark,
        output_dir,
        *("--seeds", "0", "1", "--segmenter", "threshold", "--metrics", "expansion,fid,clip"),
        *("--fid-features", "clip", "--clip-model", str(tiny_clip_folder), "--worst", "2"),
    )
    return output_dir


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory, inpaint_model):
    from test_evaluate_quality import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", inpaint_model / "tokenizer")


def test_evaluate_writes_the_full_report(evaluated):
    report = evaluated / "report"
    for name in ("results.md", "per_image.csv", "metrics.json", "expansion.png", "worst_cases.png", "command.txt"):
        assert (report / name).is_file(), name
    table = (report / "results.md").read_text()
    header = table.splitlines()[2]
    for column in (
        "Expansion ↓ (mean)",
        "IoU ↑",
        "Object lost ↓",
        "FID ↓",
        "CLIP score ↑",
        "× less expansion than SI2",
    ):
        assert column in header
    assert "| SI2 |" in table and "| Ours |" in table and "*input photos*" in table
    assert "photobg evaluate --data" in table and "## Environment" in table and "- torch: 2." in table
    for png, min_size in (("expansion.png", (400, 300)), ("worst_cases.png", (600, 300))):
        with Image.open(report / png) as image:
            assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
            assert np.asarray(image.convert("L")).std() > 10  # not a blank canvas


def test_evaluate_numbers_are_consistent(evaluated):
    rows = read_csv(evaluated / "report" / "per_image.csv")
    assert len(rows) == 2 * 3 * 2 + 3  # models x samples x seeds, plus the input photos
    summary = json.loads((evaluated / "report" / "metrics.json").read_text())["summary"]
    for row in rows:
        if row["model"] == "input photos":
            # The threshold segmenter finds the bright object of the input photos exactly: the floor is 0.
            assert (float(row["expansion"]), float(row["iou"])) == (0.0, 1.0)
            continue
        found = Image.open(evaluated / row["mask"])
        k = int(row["id"][-1])
        expected = expansion_metrics(bright_object_photo(k)[1], found)
        assert float(row["expansion"]) == expected["expansion"] and float(row["iou"]) == expected["iou"]
        assert Image.open(evaluated / row["output"]).size == (W, H)
        assert 0 <= float(row["clip_score"]) <= 100
    for name in ("SI2", "Ours"):
        values = [float(r["expansion"]) for r in rows if r["model"] == name]
        assert summary[name]["expansion_mean"] == pytest.approx(np.mean(values))
        assert summary[name]["n"] == 6
        assert math.isfinite(summary[name]["fid"]) and math.isfinite(summary[name]["clip_score"])
    assert summary["SI2"]["expansion_vs_baseline"] == 1.0
    assert summary["Ours"]["expansion_vs_baseline"] == pytest.approx(
        summary["SI2"]["expansion_mean"] / summary["Ours"]["expansion_mean"]
    )
    assert "fid" not in summary["input photos"]


def test_evaluate_resumes_without_generating(evaluated, folder_benchmark, monkeypatch):
    import photobg.models.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a resumed evaluation with every output present must not load a model")

    monkeypatch.setattr(photobg.models.loading, "load_pipeline", no_loading)
    before = (evaluated / "report" / "per_image.csv").read_text()
    evaluate(folder_benchmark, evaluated, "--seeds", "0", "1", "--segmenter", "threshold", "--metrics", "expansion")
    after = read_csv(evaluated / "report" / "per_image.csv")
    assert [r["expansion"] for r in after] == [r["expansion"] for r in csv.DictReader(before.splitlines())]


def test_evaluate_refuses_to_mix_settings(evaluated, folder_benchmark):
    with pytest.raises(SystemExit, match="other settings.*steps"):
        cli.main(
            ["evaluate", "--data", str(folder_benchmark), "--output-dir", str(evaluated), "--resolution", "0"]
            + ["--steps", "3", "--model", "tiny-inpainting@name=SI2,scale=0", "--segmenter", "threshold"]
            + ["--metrics", "expansion"]
        )


def test_evaluate_with_given_masks_gives_exact_numbers(evaluated, folder_benchmark, tmp_path):
    # Masks brought by the user: SI2's objects grown by 2 px on every side, Ours' exact, inputs exact.
    import shutil

    from scipy import ndimage

    shutil.copytree(evaluated / "generated", tmp_path / "out" / "generated")  # resume from the first run
    masks = tmp_path / "masks"
    for folder in ("SI2", "Ours", "input"):
        (masks / folder).mkdir(parents=True)
    expected = {}
    for k in range(3):
        mask = np.asarray(bright_object_photo(k)[1]) > 0
        grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3)), iterations=2)
        expected[f"item{k}"] = (int(grown.sum()) - int(mask.sum())) / (W * H)
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / "input" / f"item{k}.png")
        for seed in (0, 1):
            Image.fromarray(grown.astype(np.uint8) * 255).save(masks / "SI2" / f"item{k}_s{seed}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / "Ours" / f"item{k}_s{seed}.png")
    evaluate(
        folder_benchmark,
        tmp_path / "out",
        *("--seeds", "0", "1", "--metrics", "expansion", "--segmenter", "given-masks", "--given-masks", str(masks)),
    )
    rows = read_csv(tmp_path / "out" / "report" / "per_image.csv")
    for row in rows:
        want = expected[row["id"]] if row["model"] == "SI2" else 0.0
        assert float(row["expansion"]) == want and float(row["area_change"]) == want
    summary = json.loads((tmp_path / "out" / "report" / "metrics.json").read_text())["summary"]
    assert summary["SI2"]["expansion_mean"] == pytest.approx(np.mean(list(expected.values())))
    assert summary["Ours"]["expansion_mean"] == 0.0 and summary["Ours"]["iou_mean"] == 1.0
    assert math.isnan(summary["Ours"]["expansion_vs_baseline"])  # no expansion: no finite ratio


def test_evaluate_argument_errors(folder_benchmark, tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        evaluate(folder_benchmark, tmp_path, "--metrics", "expansion,psnr")
    with pytest.raises(SystemExit, match="at least two --seeds"):
        evaluate(folder_benchmark, tmp_path, "--metrics", "lpips")
    with pytest.raises(SystemExit, match="needs --given-masks"):
        evaluate(folder_benchmark, tmp_path, "--segmenter", "given-masks")
    with pytest.raises(SystemExit, match="'sam' segmenter could not load"):
        evaluate(folder_benchmark, tmp_path, "--segmenter-model", str(tmp_path / "nothing"), "--metrics", "expansion")
    assert not (tmp_path / "generated").exists()  # nothing generated before the checks


def test_models_sharing_weights_load_them_once(monkeypatch):
    import types

    import photobg.models.loading
    from photobg.evaluate.runner import PipelineCache

    loads = []

    def fake_load(model, controlnet=None, **kwargs):
        loads.append(model)
        return types.SimpleNamespace(set_progress_bar_config=lambda **kw: None)

    monkeypatch.setattr(photobg.models.loading, "load_pipeline", fake_load)
    cache = PipelineCache(types.SimpleNamespace(device="cpu", dtype=None))
    si2, ours, other = (parse_model_spec(t) for t in ("m@name=SI2,scale=0", "m@name=Ours", "n@name=Other"))
    assert cache.get(si2) is cache.get(ours)
    cache.get(other)
    assert loads == ["m", "n"]


# ----------------------------------------------------------------------------- bad samples, early failures


@pytest.fixture()
def bench_with_bad_samples(folder_benchmark, tmp_path):
    """The three good samples, a zero-byte image and a mask of another aspect ratio than its photo's."""
    import shutil

    root = tmp_path / "bench"
    shutil.copytree(folder_benchmark, root)
    (root / "images" / "empty_file.png").write_bytes(b"")
    photo, _ = bright_object_photo(0)
    photo.save(root / "images" / "wrong_mask.png")
    Image.new("L", (H, H), 255).save(root / "masks" / "wrong_mask.png")  # square mask, 64x48 photo
    return root


def test_evaluate_skips_bad_samples_and_evaluates_the_rest(bench_with_bad_samples, tmp_path, capsys):
    out = tmp_path / "out"
    status = evaluate(bench_with_bad_samples, out, "--segmenter", "threshold", "--metrics", "expansion")
    assert status == 1  # as `photobg generate`: something was skipped
    rows = read_csv(out / "report" / "per_image.csv")
    assert sorted({r["id"] for r in rows}) == ["item0", "item1", "item2"]
    assert len(rows) == 2 * 3 + 3  # models x good samples, plus the input photos
    log = capsys.readouterr().out
    assert "skipped empty_file: " in log and "empty_file.png: not a readable image" in log
    assert "skipped wrong_mask: " in log and "masks/wrong_mask.png: the mask is (48, 48), the image (64, 48)" in log
    assert "2 of 5 samples skipped:" in log
    report = (out / "report" / "results.md").read_text()
    assert "- skipped samples (2): empty_file (" in report and ", wrong_mask (" in report


def test_evaluate_that_stops_before_evaluating_writes_nothing(
    bench_with_bad_samples, folder_benchmark, tmp_path, capsys
):
    # A model that is not there: found before anything is generated.
    out = tmp_path / "out" / "eval"
    with pytest.raises(SystemExit, match="--model SI2"):
        cli.main(
            ["evaluate", "--data", str(folder_benchmark), "--output-dir", str(out), "--resolution", "0"]
            + ["--model", f"{tmp_path / 'no-model'}@name=SI2", "--segmenter", "threshold", "--metrics", "expansion"]
        )
    assert not (tmp_path / "out").exists()
    # No sample can be evaluated: each is named.
    for name in ("item0", "item1", "item2"):
        (bench_with_bad_samples / "images" / f"{name}.png").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"bench: no usable sample: all 5 were skipped \(see above\)\.$"):
        evaluate(bench_with_bad_samples, out, "--segmenter", "threshold", "--metrics", "expansion")
    log = capsys.readouterr().out
    for name in ("empty_file", "item0", "item1", "item2", "wrong_mask"):
        assert f"skipped {name}: " in log
    assert not (tmp_path / "out").exists()
    # A file where the folder should be: said before anything loads.
    (tmp_path / "out").write_text("")
    with pytest.raises(SystemExit, match=r"--output-dir .*out/eval: .*out is not a folder"):
        evaluate(folder_benchmark, out, "--segmenter", "threshold", "--metrics", "expansion")


def test_several_processes_remove_the_output_folder_they_made_when_stopping_early(tmp_path):
    import types

    from photobg.evaluate.command import shared_output_dir

    main_process = types.SimpleNamespace(count=2, is_main=True, gather=lambda items: items)  # sees its own file
    out = tmp_path / "new" / "eval"
    with pytest.raises(SystemExit), shared_output_dir(out, main_process):
        assert out.is_dir()  # made now: every process must see the folder, checked with a file in it
        raise SystemExit("photobg evaluate: stopped before anything was written")
    assert not (tmp_path / "new").exists()
    with pytest.raises(SystemExit), shared_output_dir(out, main_process):
        (out / "generated").mkdir()
        (out / "generated" / "a_s0.png").write_bytes(b"")
        raise SystemExit("photobg evaluate: stopped after an image was written")
    assert (out / "generated" / "a_s0.png").exists()  # what was written is kept
