"""One command on many processes: `accelerate launch [--num_processes N] [--num_machines M ...] -m photobg ...`.

`photobg generate` and `photobg evaluate` split their work with accelerate (`PartialState`, torch.distributed
underneath), the engine training scales on: every process plans the same list of jobs in the same order, takes
its contiguous share of it (`split_between_processes`), and the results come back together in process order
(`gather_object`, `reduce`), which is the order of the list. So the files, records and model calls of a run do
not depend on how many processes make it, and neither do its pixels where the arithmetic repeats: the same kind
of device, the same thread settings on a CPU (another number of threads rounds sums differently; a launched
process runs on `OMP_NUM_THREADS` threads, 1 by default, one process alone on every core), deterministic kernels
on a GPU. Without a launcher (or with one process) the same code runs on `Processes()`, which creates no process
group and whose collective calls return their input.

A collective call waits for every process. When a process dies (a crash, a SIGKILL, an out-of-memory kill), the
others learn it at their next collective call: at once when its connection closes (gloo, and torchrun stopping
the other processes of its machine), or after `COLLECTIVE_TIMEOUT` when it hangs instead (another machine that
went silent; NCCL). They then raise `LostProcess` and end with a message instead of waiting forever.
"""

import atexit
import datetime
import functools
import os
import sys
from contextlib import contextmanager

# How long a collective call waits for the slowest process. Between two calls a process loads its model (a
# download on first use) or generates one batch; half an hour is torch's own default. PHOTOBG_TIMEOUT (seconds)
# changes it.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


class LostProcess(RuntimeError):
    """Another process of the command stopped (it failed, was killed, or did not answer within the timeout)."""


def _collective(method):
    """Turn the error of a collective call whose partner is gone into `LostProcess`."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.count == 1:
            return method(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as err:  # torch.distributed's errors (DistBackendError, ...) are RuntimeErrors
            atexit.register(_exit_without_teardown)
            raise LostProcess(f"another process stopped or did not answer ({str(err).splitlines()[0]})") from err

    return call


def _exit_without_teardown():
    """At exit after `LostProcess`: leave with status 1 without tearing down the process group. Its transport still
    waits on the lost process, and destroying it then aborts the interpreter at random (SIGABRT, "terminate called
    without an active exception"), replacing the command's status. Runs after the command has returned or printed
    its message, so nothing of the command's own is skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


class Processes:
    """This process's place among the processes of one command, and the few collective calls photobg needs.

    Args:
        state: an accelerate `PartialState` (its process group set up), or None for a single process.
    """

    def __init__(self, state=None):
        self.state = state
        self.count = state.num_processes if state is not None else 1
        self.index = state.process_index if state is not None else 0
        self.is_main = self.index == 0

    @property
    def device(self):
        """This process's device when several processes share a machine's accelerators ("cuda:1", ...), else
        None (the command's own default)."""
        if self.count == 1 or self.state.device.type == "cpu":
            return "cpu" if self.count > 1 else None
        return str(self.state.device)

    def share(self, items):
        """This process's contiguous share of `items` (the first processes take one more when it does not
        divide); `gather` on the shares gives `items` back in order."""
        items = list(items)
        if self.count == 1:
            return items
        with self.state.split_between_processes(items) as mine:
            return list(mine)

    @_collective
    def gather(self, items):
        """Every process's `items` (a list), concatenated in process order, on every process."""
        from accelerate.utils import gather_object

        return list(items) if self.count == 1 else gather_object(list(items))

    @_collective
    def sum(self, values):
        """Integers summed over the processes, element by element, on every process."""
        if self.count == 1:
            return list(values)
        import torch
        from accelerate.utils import reduce

        return reduce(torch.tensor(values, dtype=torch.int64, device=self.state.device), "sum").tolist()

    @_collective
    def barrier(self):
        if self.count > 1:
            self.state.wait_for_everyone()

    @contextmanager
    def main_first(self):
        """Run the block on each machine's main process first, then on the others (which wait for it): e.g. a
        model download or a test model written to the cache happens once per machine."""
        if self.count > 1 and not self.state.is_local_main_process:
            self.barrier()
        yield
        if self.count > 1 and self.state.is_local_main_process:
            self.barrier()


@functools.cache
def current_processes():
    """The `Processes` of this command: from the launcher's environment (`accelerate launch`, torchrun) when it
    started more than one process, else a single one. Set up once per Python process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    seconds = float(os.environ.get("PHOTOBG_TIMEOUT", COLLECTIVE_TIMEOUT.total_seconds()))
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=datetime.timedelta(seconds=seconds))
    return Processes(state)


def check_shared_folder(folder, processes, flag):
    """Check that every process writes to the same folder: on several machines it must be on a filesystem they
    share (NFS, Lustre, ...), else each machine would keep its own outputs and the main process would merge only
    its own. The main process writes a file with a random token there; each process reads it back.

    Args:
        folder: the output folder (created on every process); processes: `Processes`; flag: its option's name.

    Raises:
        SystemExit: on every process, naming the first process that does not see the main process's file.
    """
    import secrets
    from pathlib import Path

    if processes.count == 1:
        return
    marker = Path(folder) / ".photobg-shared-check"
    token = None
    if processes.is_main:
        token = secrets.token_hex(16)
        marker.write_text(token)
    token = processes.gather([token])[0]
    try:
        seen = marker.read_text() == token
    except OSError:
        seen = False
    sees = processes.gather([seen])
    if processes.is_main:
        marker.unlink(missing_ok=True)
    if not all(sees):
        raise SystemExit(
            f"{flag} {folder}: process {sees.index(False)} does not see the files process 0 writes there. Every "
            "process must write to the same folder: on several machines, put it on a filesystem they share."
        )
