"""Writing a file so that no reader, and no kill, ever sees half of it: the package's one atomic-write helper.

Everything photobg writes for others to read back (PNGs with their records, the manifest, checkpoints' JSON,
prepared shards' reports, evaluation settings) is written under a temporary name beside its final one and renamed
into place: the rename is atomic on one filesystem, so the file is either the old one or the new one, whole.
"""

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, fsync=False, per_process=False):
    """A temporary path beside `path` to write to; renamed to `path` when the block ends without an error,
    removed otherwise.

    Args:
        path: the final file.
        fsync: flush the temporary file to the disk before the rename (for state that must survive a power cut,
            not only a kill).
        per_process: for a file that several processes write at once (the same content): each its own temporary
            file, `.NAME.PID.tmp`. Otherwise it is `.NAME.tmp`, so that what a killed writer left is overwritten by
            the next one instead of piling up.

    Yields:
        `pathlib.Path` of the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp" if per_process else f".{path.name}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path, text, fsync=False, per_process=False):
    """Write `text` (UTF-8) to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, fsync, per_process) as tmp:
        tmp.write_text(text, encoding="utf-8")
