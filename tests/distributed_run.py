"""Run `photobg` commands one after the other in each process of an `accelerate launch`, so that a test starts the
processes (the slow part) once for several commands:

    accelerate launch ... distributed_run.py '{"commands": [["generate", ...], ["evaluate", ...]]}'

With `"kill": {"process": K, "at": N}`, process K is SIGKILLed while it writes its N-th image: half a PNG under the
image's temporary name, the process gone before the rename, as a power cut or the out-of-memory killer leaves it.
Each process prints `process K statuses [...]` and exits with the highest status.
"""

import json
import os
import signal
import sys

from photobg import cli
from photobg.generation import run as generation_run


def kill_while_writing(at):
    save_png, written = generation_run.save_png, []

    def save(image, path, chunks=None):
        written.append(path)
        if len(written) == at:
            path.with_name(f".{path.name}.tmp").write_bytes(b"\x89PNG\r\n\x1a\n" + b"half an image")
            os.kill(os.getpid(), signal.SIGKILL)
        save_png(image, path, chunks)

    generation_run.save_png = save


if __name__ == "__main__":
    plan = json.loads(sys.argv[1])
    rank = int(os.environ["RANK"])
    if plan.get("kill") and plan["kill"]["process"] == rank:
        kill_while_writing(plan["kill"]["at"])
    statuses = [cli.main(command) for command in plan["commands"]]
    print(f"process {rank} statuses {statuses}", flush=True)
    sys.exit(max(statuses))
