"""Training: bad inputs and faults, what photobg does with each, and the row of `FAULTS` that shows it.


| row | fault | what photobg does |
| --- | --- | --- |
| missing-dataset | `--train_data_dir` does not exist | one line naming the flag and path, exit 2, nothing loaded |
| bad-value | a flag's value is refused (`--resolution 30`) | one line naming the flag and the rule, exit 2 |
| bad-value-photobg-train | the same through `photobg train` | the same: exit 2 (usage errors exit 2 everywhere) |
| wrong-column-photobg-train | a column flag names no column, through `photobg train` | as wrong-column, exit 2 |
| wrong-column | a column flag names no column | one line naming the flag, listing the columns, exit 2 |
| wrong-column-debug | the same with `--debug` | the error is raised, with its traceback |
| some-full-masks | some masks cover the whole image | each skipped and named, counted at the end; trains on |
| all-full-masks | every mask covers the whole image | one line "no usable training example" with counts, exit 1 |
| truncated-weights | latest checkpoint's weights truncated | `latest` takes the previous one; a warning names the bad |
| missing-optimizer | latest checkpoint's optimizer file gone | the same |
| named-broken | a broken checkpoint named explicitly | one line: what is missing, the newest complete one; exit 2 |
| same-size-garbage | a checkpoint file damaged at its own size | one line: the checkpoint cannot be loaded; exit 1 |
| all-broken | every checkpoint broken, `latest` | one line naming each (no silent fresh start); exit 1 |
| other-process-count | resume on other processes, other total batch | one line: both counts and both totals; exit 1 |
| killed-final-save | killed while writing the final model | the previous model still loads; the next run cleans up |

Resuming on another process count with the same total batch trains on the same remaining data with the same
learning rates: `test_train.py::test_two_processes_share_the_data_and_only_the_main_one_writes`.
"""

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
import safetensors.torch
import torch
from accelerate.state import AcceleratorState
from diffusers import ControlNetModel
from PIL import Image

from photobg.checkpoints import STATE_FILE
from photobg.cli import main as photobg_main
from photobg.data import draw_example, training_set_features, write_synthetic_dataset
from photobg.models import load_pipeline
from photobg.train import cli_main, main
from photobg.train_config import ConfigError, TrainConfig

WEIGHTS = "controlnet/diffusion_pytorch_model.safetensors"


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "shapes", 8, (40, 32), seed=0)


def write_masks_set(path, full):
    """Drawn photos in the training-set format; example k's mask covers the whole image when k is in `full`."""
    rng = np.random.default_rng(0)
    rows = {k: [] for k in training_set_features()}
    for k in range(8):
        photo, object_mask, caption = draw_example(40, 32, rng)
        if k in full:
            object_mask = Image.new("L", photo.size, 255)
        for key, value in zip(rows, (photo, object_mask, caption, "drawn", f"drawn-{k}", 40, 32)):
            rows[key].append(value)
    (path / "data").mkdir(parents=True)
    dataset = datasets.Dataset.from_dict(rows, features=training_set_features())
    dataset.to_parquet(str(path / "data" / "train-00000-of-00001.parquet"))
    return path


@pytest.fixture(scope="module")
def checkpointed(shapes, tmp_path_factory):
    """A finished 4-step run with checkpoint-2 and checkpoint-4 (each fault gets a copy)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    main(TrainConfig(**{**run_settings(shapes, out), "max_train_steps": 4}))
    AcceleratorState._reset_state(reset_partial_state=True)
    return out


def run_settings(data, out):
    return dict(
        pretrained_model_name_or_path="tiny-inpainting",
        train_data_dir=str(data),
        output_dir=str(out),
        resolution=32,
        train_batch_size=2,
        max_train_steps=5,
        checkpointing_steps=2,
        seed=0,
        report_to="none",
    )


def flags(settings):
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


@dataclass
class Case:
    """What a fault's setup works on: a copy of the checkpointed run as --output_dir, and the data."""

    out: Path
    data: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    before: dict = None  # the copied run's final ControlNet weights
    error: str = None  # the exception's text, for a fault that raises


def weights_of(folder):
    return {k: v.clone() for k, v in ControlNetModel.from_pretrained(folder).state_dict().items()}


# ----------------------------------------------------------------------------- the faults' setups


def no_change(case):
    pass


def masks_covering_everything(*indices):
    def setup(case):
        case.data = write_masks_set(case.tmp / "masks", set(indices))

    return setup


def remove_optimizer(*checkpoints):
    def setup(case):
        for checkpoint in checkpoints:
            (case.out / checkpoint / "optimizer.bin").unlink()

    return setup


def truncate_weights(case):
    weights = case.out / "checkpoint-4" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])


def same_size_garbage(case):
    optimizer = case.out / "checkpoint-4" / "optimizer.bin"
    optimizer.write_bytes(b"\0" * optimizer.stat().st_size)


def other_process_count(case):
    """checkpoint-4 as if saved by 2 processes with a total batch of 4 (its recorded file sizes updated)."""
    checkpoint = case.out / "checkpoint-4"
    saved = json.loads((checkpoint / "training_config.json").read_text())
    (checkpoint / "training_config.json").write_text(json.dumps({**saved, "num_processes": 2, "total_batch_size": 4}))
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state["files"]["training_config.json"] = (checkpoint / "training_config.json").stat().st_size
    (checkpoint / STATE_FILE).write_text(json.dumps(state))


def kill_during_final_save(case):
    """The final save dies half-way through writing its first weights file, as a SIGKILL would leave it."""

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(safetensors.torch.save(tensors, metadata=metadata)[:1000])
        raise KeyboardInterrupt("killed while saving")

    case.monkeypatch.setattr(safetensors.torch, "save_file", half_written)


def the_previous_model_survives_and_the_next_run_finishes(case):
    assert (case.out / ".final.tmp").exists()  # the killed save's staging folder, never the model itself
    for key, value in weights_of(case.out).items():
        torch.testing.assert_close(value, case.before[key], rtol=0, atol=0)
    load_pipeline(case.out / "pipeline", device="cpu")
    case.monkeypatch.undo()
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run(case, ["--resume_from_checkpoint", "latest"]) == 0
    assert not (case.out / ".final.tmp").exists() and not (case.out / ".pipeline.old").exists()
    assert any(not torch.equal(value, case.before[key]) for key, value in weights_of(case.out).items())
    load_pipeline(case.out / "pipeline", device="cpu")


# ----------------------------------------------------------------------------- the table


@dataclass
class Fault:
    name: str
    setup: Callable  # (Case) -> None: damages the run, patches something or writes other data
    flags: list
    exit: object  # 0 (trained), 1, 2 (a bad flag), "raises" (--debug) or "killed"
    says: str  # regex: in the error line (exit 1 or 2), the exception ("raises"), else the log
    then: Callable = None  # (Case) -> None: further checks
    command: str = "script"  # "script": train_controlnet_inpaint.py's `cli_main`; "photobg": `photobg train`


LATEST = ["--resume_from_checkpoint", "latest"]
FAULTS = [
    Fault(
        "missing-dataset",
        no_change,
        ["--train_data_dir", "no/such/folder"],
        2,
        r"--train_data_dir 'no/such/folder': no such folder",
    ),
    Fault("bad-value", no_change, ["--resolution", "30"], 2, r"--resolution must be a positive multiple of 8, not 30"),
    Fault(
        "bad-value-photobg-train",
        no_change,
        ["--resolution", "30"],
        2,
        r"^photobg train: error: --resolution must be a positive multiple of 8, not 30",
        command="photobg",
    ),
    Fault(
        "wrong-column-photobg-train",
        no_change,
        ["--caption_column", "caption"],
        2,
        r"^photobg train: error: --caption_column 'caption': no such column",
        command="photobg",
    ),
    Fault(
        "wrong-column",
        no_change,
        ["--caption_column", "caption"],
        2,
        r"--caption_column 'caption': no such column in .*; its columns are: image, conditioning_image, text",
    ),
    Fault("wrong-column-debug", no_change, ["--caption_column", "caption", "--debug"], "raises", "--caption_column"),
    Fault(
        "some-full-masks",
        masks_covering_everything(2, 5),
        ["--max_train_steps", "4"],
        0,
        r"'drawn-2' \(index 2\): its object mask covers the whole image.*"
        r"2 bad training examples were skipped .*: mask covering the whole image: 2",
    ),
    Fault(
        "all-full-masks",
        masks_covering_everything(*range(8)),
        [],
        1,
        r"No usable training example: all 8 are bad \(mask covering the whole image: 8\)",
    ),
    Fault(
        "truncated-weights",
        truncate_weights,
        LATEST,
        0,
        rf"checkpoint-4 \({WEIGHTS} is 1000 bytes instead of \d+ \(truncated or overwritten\)\) is incomplete: "
        r"skipped; resuming from \S*checkpoint-2.*Resumed from \S*checkpoint-2 at step 2",
    ),
    Fault(
        "missing-optimizer",
        remove_optimizer("checkpoint-4"),
        LATEST,
        0,
        r"checkpoint-4 \(optimizer.bin is missing\) is incomplete: skipped; resuming from \S*checkpoint-2",
    ),
    Fault(
        "named-broken",
        remove_optimizer("checkpoint-4"),
        ["--resume_from_checkpoint", "checkpoint-4"],
        2,
        r"--resume_from_checkpoint: checkpoint \S*checkpoint-4 is incomplete: optimizer.bin is missing; the newest "
        r"complete one is \S*checkpoint-2",
    ),
    Fault(
        "same-size-garbage",
        same_size_garbage,
        LATEST,
        1,
        r"Checkpoint \S*checkpoint-4 cannot be loaded \(.*\); it is damaged: resume from an earlier checkpoint",
    ),
    Fault(
        "all-broken",
        remove_optimizer("checkpoint-2", "checkpoint-4"),
        LATEST,
        1,
        r"No complete checkpoint in .*checkpoint-4 \(optimizer.bin is missing\); \S*checkpoint-2 \(optimizer.bin is "
        r"missing\)\. Remove them to start anew",
    ),
    Fault(
        "other-process-count",
        other_process_count,
        LATEST,
        1,
        r"checkpoint-4 was saved by 2 processes with a total batch of 4; this run has 1 processes and a total "
        r"batch of 2",
    ),
    Fault(
        "killed-final-save",
        kill_during_final_save,
        LATEST,
        "killed",
        r"Resumed from \S*checkpoint-4",
        the_previous_model_survives_and_the_next_run_finishes,
    ),
]


def run(case, extra, command="script"):
    """The inpaint entry script's `cli_main` (or `photobg train --variant inpaint`) on the case's run; returns the
    exit status (or "raises"/"killed")."""
    argv = flags(run_settings(case.data, case.out)) + extra
    try:
        if command == "photobg":
            return photobg_main(["train", "--variant", "inpaint", *argv])
        return cli_main("inpaint", argv)
    except SystemExit as err:
        return err.code
    except KeyboardInterrupt:
        return "killed"
    except ConfigError as err:
        case.error = str(err)
        return "raises"


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_training_faults(fault, checkpointed, shapes, tmp_path, monkeypatch, capsys, caplog):
    out = tmp_path / "run"
    shutil.copytree(checkpointed, out)
    case = Case(out=out, data=shapes, tmp=tmp_path, monkeypatch=monkeypatch, before=weights_of(out))
    fault.setup(case)
    with caplog.at_level("INFO"):
        status = run(case, fault.flags, fault.command)
    assert status == fault.exit
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if fault.exit in (1, 2):
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and re.search(fault.says, errors[0]), err[-2000:]
    elif fault.exit == "raises":
        assert re.search(fault.says, case.error)
    else:
        assert re.search(fault.says, caplog.text, re.S), caplog.text[-3000:]
    if fault.then:
        fault.then(case)


def test_the_fault_table_lists_every_row():
    table = __doc__.split("| what photobg does |")[1]
    rows = [line.split("|")[1].strip() for line in table.strip().splitlines()[1:] if line.startswith("|")]
    assert rows == [f.name for f in FAULTS]
