"""Record what a training run does at each optimisation step: the examples each process trains on and the learning
rate. In a test: `record_into(prefix, monkeypatch.setattr)`; under `accelerate launch`:

    python train_recorder.py PREFIX VARIANT FLAGS...

Each process appends JSON lines to `PREFIX-PROCESS.jsonl`; `read_records(prefix, process)` reads them back.
"""

import json
import sys
from pathlib import Path

import photobg.train.loop
from photobg.train import cli_main


def record_into(prefix, patch=setattr):
    """Wrap the loop's loss (sees each batch) and loss read-back (sees each step's learning rate with
    `--logging_steps 1`) so that they write records."""
    training_loss, read_losses = photobg.train.loop.training_loss, photobg.train.loop.read_losses

    def recording_loss(models, controlnet, batch, generator, accelerator=None, **kwargs):
        _append(prefix, accelerator.process_index, {"names": batch["names"]})
        return training_loss(models, controlnet, batch, generator, accelerator, **kwargs)

    def recording_read_losses(config, accelerator, pending, step, lr):
        _append(prefix, accelerator.process_index, {"step": step, "lr": lr})
        return read_losses(config, accelerator, pending, step, lr)

    patch(photobg.train.loop, "training_loss", recording_loss)
    patch(photobg.train.loop, "read_losses", recording_read_losses)


def _append(prefix, process, record):
    with open(f"{prefix}-{process}.jsonl", "a") as file:
        file.write(json.dumps(record) + "\n")


def read_records(prefix, process):
    """(the example names of each batch, in order; {step: learning rate}) of one process."""
    records = [json.loads(line) for line in Path(f"{prefix}-{process}.jsonl").read_text().splitlines()]
    batches = [r["names"] for r in records if "names" in r]
    return batches, {r["step"]: r["lr"] for r in records if "step" in r}


if __name__ == "__main__":
    record_into(sys.argv[1])
    sys.exit(cli_main(sys.argv[2], sys.argv[3:]))
