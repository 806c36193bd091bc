"""Many processes (issue 15): `accelerate launch -m photobg generate|evaluate` on two CPU processes (gloo) makes
exactly what one process makes, and a process killed mid-run leaves nothing that a rerun on one process keeps
wrongly. A launch costs 15-30 s here, so one launch runs both commands and a second one is killed.

15.1  2 processes, --batch-size 3 (calls mixing photos of two sizes), an unreadable photo, --compare
      -> the same files, pixels, grids and manifest as 1 process; exit status 1 on every process
      -> test_two_processes_make_what_one_makes
19.6  ... compared with 1 process under the same thread setting (each launched process runs on one thread)
      -> every file byte for byte, the records too -> test_two_processes_make_what_one_makes
15.3  photos of two sizes with one working size, --batch-size 3
      -> full model calls of outputs of several photos, each image at its own photo's size
      -> test_batches_of_one_working_size_fill_up
15.3  photos are read, segmented and placed in a worker thread, PNGs written in another; the model in the main one
      -> test_photos_are_read_and_written_off_the_main_thread
15.2  one process SIGKILLed while it writes an image, then a rerun with --skip-existing on 1 process
      -> no truncated PNG; exactly the files and manifest of an uninterrupted run (no part or temporary file left)
      -> test_a_killed_process_leaves_nothing_a_rerun_keeps
15.4  the same run -> one progress bar, on the main process, with the global count; one summary naming the
      skipped photo; exit status 1 -> test_two_processes_make_what_one_makes
15.5  evaluate on 2 processes -> the same report (per-image rows, table, metrics) as 1 process
      -> test_two_processes_evaluate_as_one
      the output folder is not the same on every process (machines without a shared filesystem)
      -> stops, naming the process -> test_a_folder_that_is_not_shared_is_refused
15.4  a process that stops answering -> the others end after PHOTOBG_TIMEOUT, not never
      -> test_a_silent_process_does_not_hold_the_others_forever
19.7  Ctrl-C at the terminal (SIGINT to the launcher's process group) -> every process ends with status 130 and one
      line, no traceback, the manifest that of the PNGs; `photobg launch` exits 130 too
      -> test_ctrl_c_ends_every_process_with_one_line
19.7  2 processes where a photo is skipped -> `photobg launch` exits 1 without the launcher's traceback
      -> test_two_processes_make_what_one_makes
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo, output_image
from PIL import Image

from photobg.api import BackgroundGenerator
from photobg.cli import main
from photobg.distributed import check_shared_folder
from photobg.generation import run as generation_run
from photobg.pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline

ROOT = Path(__file__).resolve().parents[1]
# accelerate's `--cpu` launcher starts one process (several need MPI); `--multi_gpu` starts them with torchrun, and
# ACCELERATE_USE_CPU keeps them on the CPU, talking over gloo. Port 0: a free one (tests may run side by side).
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
LAUNCH += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
PHOTOBG_LAUNCH = [sys.executable, "-m", "photobg", "launch", *LAUNCH[3:]]  # the same launch, photobg's endings


@pytest.fixture(autouse=True)
def one_thread():
    """The one-process runs here use one thread, as the launched processes do (OMP_NUM_THREADS=1): float sums split
    over another number of threads round differently, which moves a pixel by a level now and then (issue 19.6)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def launch(plan, cwd, start=subprocess.run, launcher=LAUNCH, **options):
    """Run `distributed_run.py` (the commands of `plan`) in two processes (`start`: or `subprocess.Popen`), with
    `accelerate launch` or (`launcher=PHOTOBG_LAUNCH`) `photobg launch`."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.update(PYTHONUNBUFFERED="1", PHOTOBG_TIMEOUT="120")  # a lost process cannot hold the other for long
    command = [*launcher, str(ROOT / "tests" / "distributed_run.py"), json.dumps(plan)]
    if start is subprocess.run:
        options["timeout"] = 600
    return start(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, **options)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, inpaint_model):
    """Photos (RGBA cutouts of two sizes and an unreadable file), a benchmark and a tiny CLIP model."""
    from test_evaluate_quality import write_tiny_clip

    root = tmp_path_factory.mktemp("inputs")
    for folder in ("photos", "bench/images"):
        (root / folder).mkdir(parents=True)
        for k, size in enumerate([(64, 48), (64, 48), (96, 72)]):
            photo, mask = make_photo(*size, seed=k)
            photo.putalpha(mask)
            photo.save(root / folder / f"{'abc'[k]}.png")
    (root / "photos" / "z.png").write_bytes(b"not an image")
    return dict(root=root, model=inpaint_model, clip=write_tiny_clip(root / "clip", inpaint_model / "tokenizer"))


def generate_command(inputs, output_dir, *extra):
    photos, model = inputs["root"] / "photos", inputs["model"]
    args = ["generate", str(photos), "--prompt", "p", "--prompt", "q", "--num-images", "2", "--steps", "2"]
    return [
        *args,
        "--working-size",
        "32",
        "--model",
        str(model),
        "--device",
        "cpu",
        "--output-dir",
        str(output_dir),
        *extra,
    ]


def evaluate_command(inputs, output_dir):
    model = inputs["model"]
    args = ["evaluate", "--data", str(inputs["root"] / "bench"), "--output-dir", str(output_dir), "--steps", "2"]
    args += ["--model", f"{model}@name=SI2,scale=0", "--model", f"{model}@name=Ours", "--seeds", "0", "1"]
    args += ["--resolution", "0", "--segmenter", "threshold", "--metrics", "expansion,fid,clip"]
    return [*args, "--fid-features", "clip", "--clip-model", str(inputs["clip"]), "--device", "cpu"]


GENERATE_OPTIONS = ["--batch-size", "3", "--compare"]  # calls of 3 mix photos of two sizes


@pytest.fixture(scope="module")
def two_processes(inputs, tmp_path_factory):
    """One `photobg launch` of two processes: `photobg generate`, then `photobg evaluate`. Returns (result,
    folders)."""
    out = tmp_path_factory.mktemp("two")
    commands = [generate_command(inputs, out / "generated", *GENERATE_OPTIONS), evaluate_command(inputs, out / "eval")]
    return launch({"commands": commands}, out, launcher=PHOTOBG_LAUNCH), out


def read_manifest(folder):
    return (folder / "manifest.jsonl").read_text().replace(str(folder.resolve()), "OUT").replace(str(folder), "OUT")


def assert_same_outputs(folder, reference):
    """The same files (hidden ones too), the same pixels, the same manifest up to the folder's name."""
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in reference.iterdir())
    for name in names:
        if name.endswith(".png"):
            with Image.open(folder / name) as image, Image.open(reference / name) as expected:
                np.testing.assert_array_equal(np.asarray(image), np.asarray(expected), err_msg=name)
    assert read_manifest(folder) == read_manifest(reference)


def assert_same_files(folder, reference):
    """The same files (hidden ones too), byte for byte: PNGs with their records, grids, the manifest."""
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in reference.iterdir())
    for name in names:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name


def test_two_processes_make_what_one_makes(two_processes, inputs, tmp_path):
    result, out = two_processes
    assert "process 0 statuses [1, 0]" in result.stdout and "process 1 statuses [1, 0]" in result.stdout, (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
    assert result.returncode == 1  # z.png was skipped: the launch ends with the processes' status
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr[-3000:]
    # One process, writing to the same folder (the records name it): every file byte for byte the same.
    two = (out / "generated").rename(out / "made-by-two")
    assert main(generate_command(inputs, out / "generated", *GENERATE_OPTIONS)) == 1
    assert_same_files(two, out / "generated")
    assert len(list(two.glob("*_compare_*.png"))) == 3

    # One summary, by the main process, naming the photo the other process skipped; one bar with the global count.
    assert result.stdout.count("1 of 4 photos failed") == 1 and result.stdout.count("z.png: not a readable") == 2
    assert "images/s on 2 processes" in result.stdout
    assert len(re.findall(r"generate: +0%\|[^|]*\| 0/16 \[[^]]*image/s\]", result.stderr)) == 1  # one bar starts
    assert "12/16" in result.stderr  # and counts the images of both processes


def test_two_processes_evaluate_as_one(two_processes, inputs, tmp_path):
    result, out = two_processes
    assert "process 0 statuses [1, 0]" in result.stdout, result.stderr[-3000:]
    # The main process's bars count its own share: half of the 6 images of a model, of the 3 samples to segment.
    assert set(re.findall(r"generate SI2: 100%\|[^|]*\| (\d+/\d+)", result.stderr)) == {"3/3"}
    assert set(re.findall(r"segment \+ score Ours: 100%\|[^|]*\| (\d+/\d+)", result.stderr)) == {"2/2"}
    assert main(evaluate_command(inputs, tmp_path / "one")) == 0
    two, one = out / "eval" / "report", tmp_path / "one" / "report"
    assert (two / "per_image.csv").read_text() == (one / "per_image.csv").read_text()
    command = (one / "command.txt").read_text()
    assert (two / "command.txt").read_text() == command.replace(str(tmp_path / "one"), str(out / "eval"))
    table = (two / "results.md").read_text().replace(str(out / "eval"), "OUT")
    assert table == (one / "results.md").read_text().replace(str(tmp_path / "one"), "OUT")
    summaries = [json.loads((folder / "metrics.json").read_text())["summary"] for folder in (two, one)]
    for name, expected in summaries[1].items():
        assert summaries[0][name].keys() == expected.keys()
        for key, value in expected.items():
            # FID and the set's CLIP score add up sums from each process: equal up to the order of the additions.
            tolerance = 1e-6 if key in ("fid", "clip_score") else 0
            assert summaries[0][name][key] == pytest.approx(value, rel=tolerance, abs=0, nan_ok=True), (name, key)


def test_a_killed_process_leaves_nothing_a_rerun_keeps(inputs, tmp_path):
    out, photos = tmp_path / "killed", [inputs["root"] / "photos" / f"{k}.png" for k in "abc"]
    command = generate_command(inputs, out)
    command[1:2] = map(str, photos)
    result = launch({"commands": [command], "kill": {"process": 1, "at": 2}}, tmp_path)
    assert result.returncode != 0
    assert "process 1 statuses" not in result.stdout  # it was killed
    assert list(out.glob(".*.png.tmp")), "killed while writing: a half-written temporary file is left"
    assert list(out.glob("b_q_*_s0.png"))  # process 1 started on its share: the second half of the 12 outputs
    for path in out.glob("*.png"):
        with Image.open(path) as image:
            image.load()  # no truncated image under an output's name

    assert main([*command, "--skip-existing"]) == 0
    assert main([*command[:-1], str(tmp_path / "one")]) == 0
    assert_same_outputs(out, tmp_path / "one")


def test_ctrl_c_ends_every_process_with_one_line(inputs, tmp_path):
    from test_faults import assert_manifest_matches_pngs

    out = tmp_path / "out"
    command = generate_command(inputs, out, "--num-images", "6", "--steps", "10")
    # Its own session: the launcher and its processes form the group a terminal's Ctrl-C goes to.
    plan = {"commands": [command]}
    launcher = launch(plan, tmp_path, subprocess.Popen, PHOTOBG_LAUNCH, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("*_s*.png")) and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(launcher.pid, signal.SIGINT)
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)  # nothing of the launch outlives the test
        launcher.wait()
    assert "process 0 statuses [130]" in stdout and "process 1 statuses [130]" in stdout, stdout + stderr[-3000:]
    assert stderr.count("Interrupted. Every image written has its record in the manifest") == 1, stderr[-3000:]
    assert "KeyboardInterrupt" not in stderr and not re.search(r'File "[^"]*photobg', stderr)  # no frame of ours
    assert_manifest_matches_pngs(out)
    # `photobg launch` ends as the processes did (`accelerate launch` itself would exit 1 with torch's traceback).
    assert launcher.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]


SILENT = """
import os, sys, time
from pathlib import Path

import accelerate, torch.distributed  # the slow imports, before the process group's short timeout starts
from photobg.distributed import LostProcess, current_processes

# Both processes set up the process group together: an import that takes longer on one of them (a loaded
# machine) must not use up the timeout under test before the collective call is reached.
ready = Path(sys.argv[1])
(ready / f"rank{os.environ['RANK']}").touch()
while len(list(ready.glob("rank*"))) < 2:
    time.sleep(0.05)
processes = current_processes()
if processes.index == 1:
    time.sleep(120)  # alive, but it never makes the collective call: a machine that went silent
start = time.time()
try:
    processes.sum([1])
except LostProcess as lost:
    print(f"lost after {time.time() - start:.1f} s: {lost}", flush=True)
"""


def test_a_silent_process_does_not_hold_the_others_forever(tmp_path):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    (tmp_path / "silent.py").write_text(SILENT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PHOTOBG_TIMEOUT": "3"}
    env.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    processes = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "silent.py"), str(tmp_path)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        printed, _ = processes[0].communicate(timeout=100)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert processes[0].returncode == 1, printed  # a failure status, never an abort while tearing down
    assert "another process stopped or did not answer" in printed
    assert 3 <= float(re.search(r"lost after ([\d.]+) s", printed).group(1)) < 30  # PHOTOBG_TIMEOUT, not forever


class OtherMachine:
    """Stands for process 1 on a machine whose output folder is a local one: it never sees process 0's file."""

    count, index, is_main = 2, 1, False

    def gather(self, items):
        return ["token-of-process-0", *items] if items == [None] else [True, *items]


def test_a_folder_that_is_not_shared_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="process 1 does not see the files process 0 writes there"):
        check_shared_folder(tmp_path, OtherMachine(), "--output-dir")


# ----------------------------------------------------------------------------- one process: feeding the model


def cutouts(folder, sizes):
    folder.mkdir()
    for k, size in enumerate(sizes):
        photo, mask = make_photo(*size, seed=k)
        photo.putalpha(mask)
        photo.save(folder / f"{'abcdefgh'[k]}.png")
    return folder


def test_batches_of_one_working_size_fill_up(tmp_path, fast, shared_pipe, monkeypatch):
    photos = cutouts(tmp_path / "in", [(64, 48), (96, 72), (64, 48), (128, 96)])  # one aspect: one working size
    calls, call = [], StableDiffusionControlNetInpaintPipeline.__call__
    monkeypatch.setattr(
        StableDiffusionControlNetInpaintPipeline,
        "__call__",
        lambda self, prompt, **kwargs: calls.append(len(prompt)) or call(self, prompt, **kwargs),
    )
    args = ["generate", photos, "--prompt", "p", "--steps", "1", "--working-size", "32", "--batch-size", "3"]
    assert main([*map(str, args), "--output-dir", str(tmp_path / "out")]) == 0
    assert calls == [3, 1]  # outputs of different photos share a call
    for k, size in enumerate([(64, 48), (96, 72), (64, 48), (128, 96)]):
        assert Image.open(output_image(tmp_path / "out", "abcd"[k])).size == size
    images = [Image.open(photos / name) for name in ("a.png", "b.png")]
    with pytest.raises(ValueError, match="different sizes in one call need `height` and `width`"):
        shared_pipe(["p", "p"], image=images)


def test_photos_are_read_and_written_off_the_main_thread(tmp_path, fast, monkeypatch):
    photos = cutouts(tmp_path / "in", [(64, 48)] * 3)
    threads = {}
    for owner, name in [(BackgroundGenerator, "prepare"), (BackgroundGenerator, "run"), (generation_run, "save_png")]:
        function = getattr(owner, name)

        def recorded(*args, _function=function, _name=name, **kwargs):
            threads.setdefault(_name, set()).add(threading.current_thread().name.split("_")[0])
            return _function(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)
    args = ["generate", str(photos), "--prompt", "p", "--steps", "1", "--output-dir", str(tmp_path / "out")]
    assert main(args) == 0
    assert threads == {"prepare": {"photobg-read"}, "run": {"MainThread"}, "save_png": {"photobg-write"}}
