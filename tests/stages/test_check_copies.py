"""check-copies on a run that has only its data stage: the audio detector indexes the corpus, finds a
planted excerpt in a given file, extends its index as the corpus grows, and refuses bad queries."""

import json
import logging

import numpy as np
import soundfile as sf

from data_prep import ingest
from jukebox_lite.cli import main
from tests.helpers import melody, write_audio

SR = 16000
FAST = ["data.separation.backend=none", "data.workers=1", "data.min_seconds=2", f"data.sample_rate={SR}", "data.valid_fraction=0"]


def test_a_planted_excerpt_is_flagged_and_novel_audio_is_not(tmp_path, caplog, capsys):
    music, run = tmp_path / "music", tmp_path / "run"
    tracks = {f"t{k}.wav": melody(30.0, SR, seed=k) for k in range(3)}
    for name, x in tracks.items():
        write_audio(music / name, x, SR)
    ingest.prepare(None, FAST, music, run)
    planted = melody(20.0, SR, seed=50)
    planted[:, 4 * SR : 10 * SR] = tracks["t2.wav"][:, 12 * SR : 18 * SR] * 0.3  # 6 s of t2, quieter
    query, novel = write_audio(tmp_path / "planted.wav", planted, SR), write_audio(tmp_path / "novel.wav", melody(20.0, SR, 51), SR)
    report_path = tmp_path / "reports" / "copies.json"
    argv = ["check-copies", "--run", str(run), str(query), str(novel), "--out", str(report_path.parent), "copies.flag_seconds=5"]
    assert main(argv) == 0
    copied, clean = json.loads(report_path.read_text())
    assert copied["input"] == str(query) and copied["flagged"] and not clean["flagged"] and clean["matches"] == []
    match = copied["matches"][0]
    assert match["detector"] == "audio" and match["training_file"]["source"] == "t2.wav"
    assert abs(match["training_offset_seconds"] - match["offset_seconds"] - 8.0) < 0.1  # the alignment: exact
    # each end to about a second: hits of this synthetic bass, which recurs by chance, join the passage on its
    # alignment when they are less than a second away
    assert 2.9 <= match["offset_seconds"] <= 4.3 and 5.0 <= match["seconds"] <= 8.2 and match["score"] > 0
    assert (run / "copies" / "audio_index.npz").is_file()

    write_audio(music / "t3.wav", melody(30.0, SR, seed=3), SR)  # the corpus grows: only the new file is fingerprinted
    ingest.prepare(None, FAST, music, run)
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    assert "fingerprinting 1 corpus file(s)" in caplog.text

    capsys.readouterr()
    sf.write(tmp_path / "silent.wav", np.zeros(SR * 5, np.float32), SR)
    sf.write(tmp_path / "blip.wav", melody(0.1, SR, 7)[0], SR)
    (tmp_path / "broken.mp3").write_text("not audio\n" * 40)
    with sf.SoundFile(tmp_path / "long.flac", "w", 8000, 1, format="FLAC") as f:
        for _ in range(62):  # 62 minutes
            f.write(np.zeros(8000 * 60, np.float32))
    for name, reason in (("silent.wav", "silent: it holds no spectral peaks to compare"),
                         ("blip.wav", "0.1 s long, shorter than copies.report_seconds (2 s)"),
                         ("broken.mp3", "not decodable as audio"),
                         ("long.flac", "too long: 3720 s or more")):
        assert main(["check-copies", "--run", str(run), str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{tmp_path / name}' cannot be checked for copies: {reason}" in err, err


def test_an_index_of_another_corpus_is_rebuilt(tmp_path, caplog):
    music, run = tmp_path / "music", tmp_path / "run"
    for k in range(2):
        write_audio(music / f"t{k}.wav", melody(10.0, SR, seed=k), SR)
    ingest.prepare(None, FAST, music, run)
    query = write_audio(tmp_path / "q.wav", melody(10.0, SR, seed=1), SR)
    assert main(["check-copies", "--run", str(run), str(query)]) == 0
    manifest = run / "data" / "manifest.jsonl"
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")  # a corpus without one of the indexed files
    with caplog.at_level(logging.INFO):
        assert main(["check-copies", "--run", str(run), str(query)]) == 0
    assert "indexes files the corpus no longer holds; rebuilding it" in caplog.text
