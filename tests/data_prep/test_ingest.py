"""The data stage on synthesized corpora: good files, every kind of bad file, resume, labels, splits."""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep import ingest
from jukebox_lite.core import audio
from jukebox_lite.cli import main
from jukebox_lite.core.errors import UserError
from tests.helpers import synth_music, write_audio

FAST = ["data.separation.backend=none", "data.workers=1", "data.min_seconds=2", "data.sample_rate=22050", "data.max_seconds=10"]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def corpus(tmp_path):
    """Three good files in genre/artist folders and one of every kind of bad file."""
    root = tmp_path / "music"
    good = {
        "deep/ann/one.wav": write_audio(root / "deep/ann/one.wav", synth_music(3.0, 48000, seed=1), 48000),
        "deep/ann/two.flac": write_audio(root / "deep/ann/two.flac", synth_music(4.0, 44100, seed=2), 44100),
        "tech/bo/three.mp3": write_audio(
            root / "tech/bo/three.mp3", synth_music(3.0, 44100, seed=3), 44100, format="MP3"
        ),
    }
    x = synth_music(3.0, 44100, seed=4, channels=1)
    wav = write_audio(tmp_path / "whole.wav", x, 44100).read_bytes()
    flac = write_audio(tmp_path / "whole.flac", x, 44100).read_bytes()
    bad = root / "rejects"
    bad.mkdir()
    (bad / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    (bad / "corrupt.flac").write_bytes(flac[: len(flac) // 2])
    (bad / "zero.ogg").write_bytes(b"")
    (bad / "notes.mp3").write_text("not audio at all\n" * 50)
    write_audio(bad / "silent.wav", np.zeros((2, 3 * 44100), np.float32), 44100)
    write_audio(bad / "squeak.wav", synth_music(3.0, 2000, seed=5), 2000)
    (bad / "unreadable.flac").symlink_to(tmp_path / "nowhere.flac")
    (bad / "copy.wav").write_bytes(good["deep/ann/one.wav"].read_bytes())
    quiet_edges = np.concatenate([np.zeros((2, 44100)), synth_music(1.0, 44100, seed=6), np.zeros((2, 44100))], 1)
    write_audio(bad / "short.wav", quiet_edges.astype(np.float32), 44100)
    (root / "cover.jpg").write_bytes(b"\xff\xd8 not scanned")
    os.mkfifo(bad / "pipe.wav")  # prepare once hung forever on these two
    (bad / "endless.flac").symlink_to("/dev/zero")
    with sf.SoundFile(bad / "long.flac", "w", 8000, 1, format="FLAC") as f:  # 11 s: over data.max_seconds=10
        f.write(np.full(8000 * 11, 0.1, np.float32))
    return root


def test_good_files_accepted_and_every_bad_file_rejected_with_a_reason(corpus, tmp_path):
    run = tmp_path / "run"
    summary = ingest.prepare(None, FAST, corpus, run, labels_from_folders=True)
    manifest = read(run / "data/manifest.jsonl")
    rejected = {row["source"]: row["reason"] for row in read(run / "data/rejected.jsonl")}

    assert sorted(row["source"] for row in manifest) == ["deep/ann/one.wav", "deep/ann/two.flac", "tech/bo/three.mp3"]
    assert rejected == {
        "rejects/truncated.wav": pytest.approx(rejected["rejects/truncated.wav"]),
        "rejects/corrupt.flac": pytest.approx(rejected["rejects/corrupt.flac"]),
        "rejects/zero.ogg": "file is empty (0 bytes)",
        "rejects/notes.mp3": pytest.approx(rejected["rejects/notes.mp3"]),
        "rejects/silent.wav": "silent: nothing louder than -50 dBFS",
        "rejects/squeak.wav": "sample rate 2000 Hz is outside 4000-768000 Hz",
        "rejects/unreadable.flac": pytest.approx(rejected["rejects/unreadable.flac"]),
        "rejects/copy.wav": "duplicate: same content as deep/ann/one.wav",
        "rejects/short.wav": pytest.approx(rejected["rejects/short.wav"]),
        "rejects/pipe.wav": "not a regular file (a FIFO, device or socket)",
        "rejects/endless.flac": "not a regular file (a FIFO, device or socket)",
        "rejects/long.flac": "too long: 11 s or more, over data.max_seconds (10 s); split it first",
    }
    assert rejected["rejects/truncated.wav"].startswith("truncated")
    assert rejected["rejects/corrupt.flac"].startswith("corrupt or truncated")
    assert rejected["rejects/notes.mp3"].startswith("not decodable as audio")
    assert rejected["rejects/unreadable.flac"].startswith("cannot read file")
    assert rejected["rejects/short.wav"].startswith("too short: 1.0 s")
    assert summary.accepted_new == 3 and summary.rejected_new == 12

    for row in manifest:
        assert set(row) >= {"id", "source", "sha256", "duration", "sample_rate", "labels", "split"}
        y, sr = sf.read(run / "data" / row["path"], dtype="float32", always_2d=True)
        assert sr == 22050 and y.shape[1] == 1  # resampled and downmixed
        assert y.shape[0] / sr == pytest.approx(row["duration"], abs=1e-3)
        assert audio.integrated_loudness(y.T, sr) == pytest.approx(-16.0, abs=0.5)
        assert row["split"] == ingest.split_for(row["sha256"], 0.1)
    labels = {row["source"]: row["labels"] for row in manifest}
    assert labels["deep/ann/one.wav"] == {"genre": "deep", "artist": "ann"}
    assert labels["tech/bo/three.mp3"] == {"genre": "tech", "artist": "bo"}
    assert (run / "data/config.yaml").exists()


def test_rerun_skips_finished_files_and_picks_up_new_ones(corpus, tmp_path):
    run = tmp_path / "run"
    ingest.prepare(None, FAST, corpus, run)
    manifest_before = (run / "data/manifest.jsonl").read_text()
    rejected_before = (run / "data/rejected.jsonl").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "data/audio").iterdir()}

    again = ingest.prepare(None, FAST, corpus, run)
    assert (again.accepted_new, again.rejected_new, again.accepted_before) == (0, 0, 3)
    assert (run / "data/manifest.jsonl").read_text() == manifest_before
    assert (run / "data/rejected.jsonl").read_text() == rejected_before
    assert {p: p.stat().st_mtime_ns for p in (run / "data/audio").iterdir()} == mtimes

    write_audio(corpus / "late.wav", synth_music(3.0, 44100, seed=9), 44100)
    third = ingest.prepare(None, FAST, corpus, run)
    assert third.accepted_new == 1 and len(read(run / "data/manifest.jsonl")) == 4


def test_a_killed_run_leaves_no_partial_file_and_resumes(corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_write = audio.write_flac
    calls = []

    def dies_on_second_write(path, wav, sr):
        calls.append(path)
        if len(calls) == 2:
            killed = subprocess.Popen(["true"])
            killed.wait()  # a writer process that no longer exists, as after a SIGKILL
            with open(path.with_name(f".{path.stem}.tmp{killed.pid}{path.suffix}"), "wb") as f:
                f.write(b"fLaC half")  # what a kill mid-write leaves: only a temporary
            raise KeyboardInterrupt
        real_write(path, wav, sr)

    monkeypatch.setattr(audio, "write_flac", dies_on_second_write)
    with pytest.raises(KeyboardInterrupt):
        ingest.prepare(None, FAST, corpus, run)
    monkeypatch.setattr(audio, "write_flac", real_write)
    assert len(read(run / "data/manifest.jsonl")) == 1
    finished = [p.name for p in (run / "data/audio").iterdir() if not p.name.startswith(".")]
    assert len(finished) == 1  # the half-written file is only a hidden temporary

    summary = ingest.prepare(None, FAST, corpus, run)
    assert summary.accepted == 3 and summary.accepted_new == 2
    ids = [row["id"] for row in read(run / "data/manifest.jsonl")]
    assert len(ids) == len(set(ids)) == 3
    assert sorted(p.name for p in (run / "data/audio").iterdir()) == sorted(f"{i}.flac" for i in ids)


def test_label_sources_and_their_priority(tmp_path):
    root = tmp_path / "music"
    for name in ("a.wav", "b.wav"):
        write_audio(root / "folder_genre" / name, synth_music(3.0, 22050, seed=len(name) + ord(name[0])), 22050)
    (root / "labels.csv").write_text("path,genre,artist\nfolder_genre/a.wav,deep_house,kim\n")
    ingest.prepare(None, FAST, root, tmp_path / "r1", labels_from_folders=True)
    labels = {row["source"]: row["labels"] for row in read(tmp_path / "r1/data/manifest.jsonl")}
    assert labels == {"folder_genre/a.wav": {"genre": "deep_house", "artist": "kim"}, "folder_genre/b.wav": {"genre": "folder_genre"}}

    (root / "labels.csv").unlink()
    (root / "labels.json").write_text(json.dumps({"folder_genre/b.wav": {"genre": "garage"}}))
    ingest.prepare(None, FAST, root, tmp_path / "r2", cli_labels={"genre": None, "artist": "lee"})
    labels = {row["source"]: row["labels"] for row in read(tmp_path / "r2/data/manifest.jsonl")}
    assert labels == {"folder_genre/a.wav": {"artist": "lee"}, "folder_genre/b.wav": {"genre": "garage", "artist": "lee"}}

    ingest.prepare(None, FAST, root, tmp_path / "r3", cli_labels={"genre": "techno"})
    assert {row["labels"]["genre"] for row in read(tmp_path / "r3/data/manifest.jsonl")} == {"techno"}

    (root / "labels.json").write_text("{broken")
    with pytest.raises(UserError, match="labels.json"):
        ingest.prepare(None, FAST, root, tmp_path / "r4")


def test_split_is_deterministic_and_near_the_fraction():
    hashes = [f"{i * 2654435761 % 2**32:08x}" + "0" * 56 for i in range(4000)]
    splits = [ingest.split_for(h, 0.2) for h in hashes]
    assert splits == [ingest.split_for(h, 0.2) for h in hashes]
    assert 0.17 < splits.count("valid") / len(splits) < 0.23
    assert ingest.split_for("f" * 64, 0.0) == "train"


def test_parallel_workers_give_the_same_corpus(corpus, tmp_path):
    ingest.prepare(None, FAST, corpus, tmp_path / "one")
    ingest.prepare(None, [*FAST, "data.workers=2"], corpus, tmp_path / "two")
    one, two = read(tmp_path / "one/data/manifest.jsonl"), read(tmp_path / "two/data/manifest.jsonl")
    assert one == two
    for row in one:
        assert (tmp_path / "one/data" / row["path"]).read_bytes() == (tmp_path / "two/data" / row["path"]).read_bytes()


def test_folder_errors_and_all_rejected_are_one_clear_sentence(tmp_path, capsys):
    assert main(["prepare", "--audio", str(tmp_path / "absent"), "--run", str(tmp_path / "r"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and "Traceback" not in err

    (tmp_path / "empty").mkdir()
    assert main(["prepare", "--audio", str(tmp_path / "empty"), "--run", str(tmp_path / "r"), *FAST]) == 2
    assert "No audio files" in capsys.readouterr().err

    write_audio(tmp_path / "hush" / "quiet.wav", np.zeros((1, 44100 * 3), np.float32), 44100)
    assert main(["prepare", "--audio", str(tmp_path / "hush"), "--run", str(tmp_path / "r"), *FAST]) == 2
    assert "every file was rejected" in capsys.readouterr().err
    assert read(tmp_path / "r/data/rejected.jsonl")[0]["reason"].startswith("silent")


def test_changed_settings_on_an_existing_run_are_refused(corpus, tmp_path):
    run = tmp_path / "run"
    ingest.prepare(None, FAST, corpus, run)
    before = (run / "data/manifest.jsonl").read_text()
    with pytest.raises(UserError, match="sample_rate"):
        ingest.prepare(None, [*FAST, "data.sample_rate=16000"], corpus, run)
    assert (run / "data/manifest.jsonl").read_text() == before


def _workers(pid: int) -> set[int]:
    """The pool's worker processes of `pid` (its spawned children running multiprocessing's spawn_main)."""
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(c) for c in (task / "children").read_text().split()}
    return {c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _running_after(pids: set[int], seconds: float) -> set[int]:
    """Those of `pids` still running once all have ended or `seconds` have passed. They are not our
    children, so they cannot be waited for: /proc is read every 50 ms."""
    deadline = time.monotonic() + seconds
    while (running := {pid for pid in pids if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def _wait_for_a_new_row(process: subprocess.Popen, manifest: Path, rows_before: int, seconds: float = 300) -> None:
    """Return once prepare has added a row to the manifest. Its progress bar moves right after each row,
    so this wakes on prepare's output instead of polling; the deadline is only a safety net."""
    output = b""
    deadline = time.monotonic() + seconds
    while not (manifest.exists() and len(read(manifest)) > rows_before):
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(process.stdout.fileno(), 65536) if ready else b""
        if not chunk:
            process.kill()  # its workers die with it
            what = f"ended (status {process.wait()})" if ready else f"ran {seconds:.0f} s"
            pytest.fail(f"prepare {what} without adding a manifest row; its output: {output.decode(errors='replace')[-2000:]}")
        output += chunk


def test_stopped_or_killed_prepare_takes_its_workers_along_and_resumes_cleanly(tmp_path):
    """SIGTERM ends prepare as Ctrl-C does (one line, status 130, no half-written file); SIGKILL of
    prepare kills its workers at once (they once wrote files for minutes after); a rerun completes."""
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("this kernel has no /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN) to find prepare's workers")
    music, run = tmp_path / "music", tmp_path / "run"
    t = np.arange(10 * 22050) / 22050
    music.mkdir()
    for k in range(6):  # Spleeter takes about 0.6 s per file: stops land while workers are busy
        tone = 0.3 * np.sin(2 * np.pi * (110 + 30 * k) * t) + 0.05 * np.random.default_rng(k).standard_normal(t.size)
        sf.write(music / f"t{k}.wav", tone.astype(np.float32), 22050)
    command = [sys.executable, "-m", "jukebox_lite", "prepare", "--audio", str(music), "--run", str(run),
               "data.workers=2", "data.min_seconds=2", "data.sample_rate=16000"]
    manifest = run / "data" / "manifest.jsonl"

    def start_and_wait_for_a_file() -> tuple[subprocess.Popen, set[int]]:
        """prepare with a file done and the next ones under way, and its workers."""
        before = len(read(manifest)) if manifest.exists() else 0
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        _wait_for_a_new_row(process, manifest, before)
        workers = _workers(process.pid)
        assert workers, "prepare runs no workers while files are left to do"
        return process, workers

    process, workers = start_and_wait_for_a_file()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130 and output.decode().strip().splitlines()[-1] == (
        "jukebox-lite prepare: interrupted; finished work is kept, rerun to resume.")
    assert not any(_alive(w) for w in workers)  # ended with prepare (its output closed only once theirs did)
    assert not list((run / "data").rglob(".*.tmp*"))  # nothing half-written
    done = read(manifest)
    assert all((run / "data" / row["path"]).is_file() for row in done) and len(done) < 6

    process, workers = start_and_wait_for_a_file()
    process.kill()  # SIGKILL: no handler runs in prepare; the kernel kills its workers with it
    process.wait()
    survivors = _running_after(workers, 30)  # gone in 0.1 s here; without the kernel's help, never
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)  # nothing left running, even when the test fails
    assert not survivors, f"workers {sorted(survivors)} still ran 30 s after prepare was killed"

    assert subprocess.run(command, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode == 0
    rows = read(manifest)
    assert sorted(row["source"] for row in rows) == [f"t{k}.wav" for k in range(6)]  # each once
    assert not list((run / "data").rglob(".*.tmp*"))


def test_a_full_disk_stops_prepare_in_one_sentence_and_keeps_the_corpus(corpus, tmp_path):
    """libsndfile reports a full disk as "System error"; in a worker that was a traceback. The file's
    temporary is made a link to /dev/full (ENOSPC on every write, as a full disk)."""
    import pickle

    from jukebox_lite.core.atomic import file_sha256

    run = tmp_path / "run"
    ingest.prepare(None, FAST, corpus, run)  # three files prepared
    manifest = (run / "data/manifest.jsonl").read_text()
    new = write_audio(corpus / "deep/ann/four.wav", synth_music(3.0, 44100, seed=8), 44100)
    source = ingest.Source(new, "deep/ann/four.wav", file_sha256(new))
    (run / "data/audio" / f".{source.id}.tmp{os.getpid()}.flac").symlink_to("/dev/full")
    with pytest.raises(UserError, match=r"^The disk is full: '.*four.*\.flac' could not be written") as error:
        ingest.prepare(None, FAST, corpus, run)
    assert str(pickle.loads(pickle.dumps(error.value))) == str(error.value)  # it crosses from a worker intact
    assert (run / "data/manifest.jsonl").read_text() == manifest
    assert not list((run / "data").rglob(".*.tmp*"))
    assert ingest.prepare(None, FAST, corpus, run).accepted_new == 1  # space again: it goes on


def test_damaged_label_files_and_labels_that_are_not_text_are_refused_in_one_line(tmp_path, capsys):
    root = tmp_path / "music"
    write_audio(root / "a.wav", synth_music(3.0, 22050, seed=1), 22050)
    cases = {
        "labels.csv": ("path,genre\na.wav," + "x" * 200_000 + "\n", "field larger than field limit"),
        "labels.json": (json.dumps({"a.wav": {"genre": ["a", {"b": 1}]}}), "the genre of 'a.wav' is ['a', {'b': 1}]; a label is text"),
    }
    for name, (content, reason) in cases.items():
        (root / name).write_text(content)
        assert main(["prepare", "--audio", str(root), "--run", str(tmp_path / "run"), *FAST]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err and len(err) < 400, err
        (root / name).unlink()


def test_labels_follow_the_files_they_belong_to(tmp_path):
    """--genre on a prepared corpus relabels it (audio not redone); a labelled duplicate gives its labels to
    the twin that is kept; a file name holding a backslash keeps its label-file entry."""
    root, run = tmp_path / "music", tmp_path / "run"
    write_audio(root / "a.wav", synth_music(3.0, 22050, seed=1), 22050)
    (root / "z").mkdir()
    (root / "z" / "copy of a.wav").write_bytes((root / "a.wav").read_bytes())
    write_audio(root / "back\\slash.wav", synth_music(3.0, 22050, seed=2), 22050)
    (root / "labels.json").write_text(json.dumps({"z/copy of a.wav": {"artist": "kim"}, "back\\slash.wav": {"genre": "dub"}}))
    ingest.prepare(None, FAST, root, run)
    labels = {row["source"]: row["labels"] for row in read(run / "data/manifest.jsonl")}
    assert labels == {"a.wav": {"artist": "kim"}, "back\\slash.wav": {"genre": "dub"}}
    audio_before = {p.name: p.stat().st_mtime_ns for p in (run / "data/audio").iterdir()}

    summary = ingest.prepare(None, FAST, root, run, cli_labels={"genre": "deep_house"})
    labels = {row["source"]: row["labels"] for row in read(run / "data/manifest.jsonl")}
    assert labels == {"a.wav": {"artist": "kim", "genre": "deep_house"}, "back\\slash.wav": {"genre": "deep_house"}}
    assert summary.accepted_new == 0 and {p.name: p.stat().st_mtime_ns for p in (run / "data/audio").iterdir()} == audio_before
    (root / "labels.json").unlink()
    ingest.prepare(None, FAST, root, run)  # no label source given: the labels stay
    assert {row["source"]: row["labels"] for row in read(run / "data/manifest.jsonl")} == labels


def test_a_damaged_manifest_line_is_named(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    ingest.prepare(None, FAST, corpus, run)
    capsys.readouterr()  # its progress bar
    manifest = run / "data/manifest.jsonl"
    good = manifest.read_bytes()
    lines = good.splitlines(keepends=True)
    for damaged, reason in ((b'{"id": "x", \xff\xfe\n', "line 2 is damaged (invalid start byte)"),
                            (b'{"id": "x", "path"\n', "line 2 is damaged (Expecting ':' delimiter)"),
                            (b'{"id": "x"}\n', "entry 2 lacks a valid path, source, sha256, duration, labels, split")):
        manifest.write_bytes(lines[0] + damaged + b"".join(lines[2:]))
        assert main(["prepare", "--audio", str(corpus), "--run", str(run), *FAST]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err, err
    manifest.write_bytes(good)


def test_reject_reasons_say_what_is_wrong(tmp_path):
    import struct

    x = np.random.default_rng(0).standard_normal((8000 * 3, 1)).astype(np.float32) * 0.1
    sf.write(tmp_path / "loud.wav", x * 1e31, 8000, subtype="FLOAT")  # peak ~4e30: was called "vocals only"
    sf.write(tmp_path / "many.wav", x, 8000, subtype="PCM_16")
    header = bytearray((tmp_path / "many.wav").read_bytes())
    fmt = header.find(b"fmt ") + 8
    header[fmt + 2 : fmt + 14] = struct.pack("<HIIH", 1000, 8000, 8000 * 2000, 2000)  # 1000 channels, consistently
    (tmp_path / "many.wav").write_bytes(header)  # was called "silent"
    with pytest.raises(audio.AudioError, match=r"samples reach [0-9.]+e\+30, far outside \[-1, 1\]"):
        audio.load_audio(tmp_path / "loud.wav")
    with pytest.raises(audio.AudioError, match="the header claims 1000 channels; music has 1 to 16"):
        audio.load_audio(tmp_path / "many.wav")
