"""Run-folder locks: a second writer is refused naming the first; a dead holder's lock is taken over."""

import logging
import os
import signal
import subprocess
import sys

import pytest

from jukebox_lite.cli import main
from jukebox_lite.core.errors import UserError
from jukebox_lite.core.locks import folder_lock, launch_rank
from tests.helpers import ROOT

HOLD = "from pathlib import Path; from jukebox_lite.core.locks import folder_lock\n" \
       "with folder_lock(Path({folder!r}), 'jukebox-lite prepare'):\n    print('held', flush=True); import time; time.sleep(60)"


def hold(folder):
    """Another process holding `folder`'s lock, as a running prepare would."""
    process = subprocess.Popen([sys.executable, "-c", HOLD.format(folder=str(folder))], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys, caplog):
    folder = tmp_path / "run" / "data"
    holder = hold(folder)
    try:
        with pytest.raises(UserError, match=rf"'{folder}' is being written by pid {holder.pid} \(jukebox-lite prepare, since "):
            with folder_lock(folder, "jukebox-lite prepare"):
                pass
        # the command itself: refused in one line before any work, nothing created
        assert main(["prepare", "--run", str(tmp_path / "run"), "--audio", str(tmp_path / "nowhere")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"being written by pid {holder.pid}" in err and not folder.exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the lock file still names it
        holder.wait()
    assert f"pid {holder.pid}" in (tmp_path / "run" / ".data.lock").read_text()
    with caplog.at_level(logging.INFO), folder_lock(folder, "jukebox-lite prepare"):  # the kernel dropped its lock
        assert f"pid {os.getpid()}" in (tmp_path / "run" / ".data.lock").read_text()
    assert f"from pid {holder.pid}" in caplog.text
    assert (tmp_path / "run" / ".data.lock").read_text() == ""  # a clean end names no holder


def test_other_folders_of_the_same_run_are_free(tmp_path):
    holder = hold(tmp_path / "run" / "prior_level1")
    try:
        with folder_lock(tmp_path / "run" / "prior_level0", "jukebox-lite train-prior"):  # upsamplers side by side
            pass
    finally:
        holder.kill()
        holder.wait()


def test_only_rank_zero_of_a_launch_locks(monkeypatch):
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch_rank() == 0
    monkeypatch.setenv("PMI_RANK", "3")
    assert launch_rank() == 3
    monkeypatch.setenv("RANK", "1")
    assert launch_rank() == 1
