import json

import pytest

from jukebox_lite.core.atomic import append_line, atomic_path, read_jsonl


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.txt"
    target.write_text("good")
    with pytest.raises(OSError):
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
