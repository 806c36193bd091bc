"""The package's one atomic-write helper (`photobg.files`)."""

import os

import pytest

from photobg.files import atomic_path, write_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_what_a_killed_writer_left_is_overwritten_not_piled_up(tmp_path):
    target = tmp_path / "a.json"
    (tmp_path / ".a.json.tmp").write_text("left by a kill -9")  # a writer killed between write and rename
    write_atomic(target, "new", fsync=True)
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_processes_writing_one_file_each_use_their_own_temporary(tmp_path):
    with atomic_path(tmp_path / "settings.json", per_process=True) as tmp:
        assert tmp.name == f".settings.json.{os.getpid()}.tmp"
        tmp.write_text("{}")
    assert (tmp_path / "settings.json").read_text() == "{}"
