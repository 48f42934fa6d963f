import json

import pytest

from jukebox_lite.core.atomic import append_line, atomic_path, read_jsonl
from jukebox_lite.core.errors import UserError


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.txt"
    target.write_text("good")
    with pytest.raises(UserError, match="The disk is full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")  # what a full disk raises
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.txt"]


def test_successful_write_replaces(tmp_path):
    target = tmp_path / "sub" / "state.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_torn_last_line_is_cut_so_appends_stay_readable(tmp_path):
    path = tmp_path / "log.jsonl"
    append_line(path, json.dumps({"a": 1}))
    with open(path, "a") as f:
        f.write('{"a": 2, "tor')  # a run killed mid-write
    assert read_jsonl(path) == [{"a": 1}]
    append_line(path, json.dumps({"a": 3}))
    assert read_jsonl(path) == [{"a": 1}, {"a": 3}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def full_disk_at(path):
    """The next atomic write of `path` in this process lands on /dev/full, which fails every write with
    ENOSPC as a full disk does: its temporary is made a link to it."""
    import os

    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    tmp.symlink_to("/dev/full")
    return tmp


def test_a_full_disk_is_one_sentence_for_every_writer_and_the_old_file_survives(tmp_path):
    """libsndfile says "System error", torch's zip writer raises a RuntimeError about positions, Python an
    OSError 28: each becomes the same UserError, and the file that was there before is untouched."""
    import numpy as np
    import torch

    from jukebox_lite.core.audio import write_flac
    from jukebox_lite.core.checkpoint import save_checkpoint
    from jukebox_lite.core.config import RecipeConfig, save_config

    writers = {
        "a.flac": lambda p: write_flac(p, np.zeros((1, 16000), np.float32), 16000),
        "last.pt": lambda p: save_checkpoint(p, "prior", {}, {"w": torch.zeros(1000)}, step=1),
        "config.yaml": lambda p: save_config(RecipeConfig(), p),
    }
    for name, write in writers.items():
        path = tmp_path / name
        path.write_bytes(b"before")
        tmp = full_disk_at(path)
        with pytest.raises(UserError, match=rf"^The disk is full: '{path}' could not be written \(what was there before is intact\)"):
            write(path)
        assert path.read_bytes() == b"before" and not tmp.is_symlink() and not tmp.exists()


def test_other_failures_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="not about space"):
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"1")
            raise RuntimeError("not about space")
