"""Codes stage: chunked encoding equals whole-file encoding, the on-disk layout, reruns, the reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jukebox_lite import cli
from jukebox_lite.core.audio import load_audio
from jukebox_lite.algorithms.codes import CodesCorpus
from jukebox_lite.stages.encode import encode_run
from jukebox_lite.core.config import VQVAEConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.vqvae import VQVAE
from jukebox_lite.models.checkpoints import load_vqvae
from tests.helpers import synth_music
from tests.helpers import TINY_SR, make_run, save_vqvae, tiny_model

# ----------------------------------------------------------------------------------------------
# Chunked encoding


def test_encoder_context_covers_the_measured_receptive_field():
    model = tiny_model()
    context = model.encoder_context()
    x = torch.randn(1, 1, 4096)
    nudged = x.clone()
    nudged[..., 2048] += 1.0
    reach = 0
    for level, encoder in enumerate(model.encoders):
        changed = ((encoder(x) - encoder(nudged)).abs().amax(dim=1)[0] > 0).nonzero().flatten()
        positions = changed * model.hop_lengths[level]
        reach = max(reach, 2048 - int(positions.min()), int(positions.max()) - 2048)
    assert reach <= context < reach + 2 * model.hop_lengths[-1]  # safe, and not wastefully large


def test_released_settings_context_is_about_one_second():
    context = VQVAE(VQVAEConfig()).encoder_context()
    assert context % 128 == 0 and 30_000 < context < 60_000  # level 0: depth 8, dilations up to 3^7


@pytest.mark.parametrize("chunk, batch", [(8, 1), (48, 3), (400, 2), (10_000, 4)])
def test_chunked_codes_equal_whole_file_codes(chunk, batch):
    model = tiny_model()
    audio = torch.from_numpy(synth_music(0.31, TINY_SR, seed=5, channels=1)[0])  # 4960 samples
    audio = audio[:4957]  # not a multiple of the top hop: padded to 4960
    whole = model.encode(torch.nn.functional.pad(audio, (0, 3))[None, None])
    chunked = model.encode_long(audio, chunk_samples=chunk, batch_size=batch)
    for level, (ours, reference) in enumerate(zip(chunked, whole)):
        assert ours.dtype == torch.long and ours.shape == (4960 // model.hop_lengths[level],)
        assert torch.equal(ours, reference[0]), f"level {level}"


def test_too_little_context_would_change_the_latents():
    """The check above has teeth: with context cut short, chunk edges see zero padding."""
    model = tiny_model()
    context = model.encoder_context()
    x = torch.randn(1, 1, 2048)
    whole = model.encoders[2](x)  # (1, emb, 256)
    short = context // 2
    core = slice(1024, 1024 + 256)
    window = model.encoders[2](x[..., core.start - short : core.stop + short])
    hop = model.hop_lengths[2]
    kept = window[..., short // hop : short // hop + 256 // hop]
    assert not torch.allclose(kept, whole[..., core.start // hop : core.stop // hop])
    window = model.encoders[2](x[..., core.start - context : core.stop + context])
    kept = window[..., context // hop : context // hop + 256 // hop]
    assert torch.allclose(kept, whole[..., core.start // hop : core.stop // hop], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The stage


def test_encode_stage_writes_aligned_memmaps_and_index(tmp_path):
    run = make_run(tmp_path)
    assert cli.main(["encode", "--run", str(run), "--chunk-seconds", "0.1", "--batch-size", "2"]) == 0
    index = json.loads((run / "codes" / "index.json").read_text())
    model = load_vqvae(run / "vqvae")
    assert index["vqvae"] == {"fingerprint": model.fingerprint(), "sample_rate": TINY_SR,
                              "hop_lengths": [2, 4, 8], "bins": 16}
    assert index["dtype"] == "uint16" and index["genres"] == ["house", "unknown"]
    assert index["artists"] == ["artist0", "artist1", "unknown"]
    assert [f["split"] for f in index["files"]] == ["train", "valid", "train", "train"]

    corpus = CodesCorpus(run / "codes", vqvae_fingerprint=model.fingerprint())
    for i, entry in enumerate(corpus.files):
        audio = torch.from_numpy(synth_music([1.3, 0.7, 2.1, 0.9][i], TINY_SR, seed=i, channels=1)[0])
        assert entry["samples"] == audio.shape[0]
        padded = -(-audio.shape[0] // 8) * 8
        for level in range(3):
            tokens = corpus.file_codes(entry["id"], level)
            assert tokens.dtype == np.uint16 and len(tokens) == padded // corpus.hop_lengths[level]
        # the stored tokens are those of the FLAC on disk, encoded whole
        stored = torch.from_numpy(corpus.file_codes(i, 0).astype(np.int64))
        flac, _ = load_audio(run / "data" / "audio" / f"t{i}.flac")
        x = torch.nn.functional.pad(torch.from_numpy(flac)[None], (0, padded - flac.shape[1]))
        assert torch.equal(stored, model.encode(x, levels=[0])[0][0])
    assert len(corpus.level(2)) == sum(f["levels"][2]["length"] for f in corpus.files)


def test_rerun_is_a_no_op_and_a_new_vqvae_re_encodes(tmp_path):
    run = make_run(tmp_path)
    encode_run(run, chunk_seconds=0.1)
    index_path = run / "codes" / "index.json"
    first = index_path.stat().st_mtime_ns, (run / "codes" / "level0.bin").stat().st_mtime_ns
    encode_run(run, chunk_seconds=0.1)
    assert (index_path.stat().st_mtime_ns, (run / "codes" / "level0.bin").stat().st_mtime_ns) == first

    old = CodesCorpus(run / "codes")
    old_tokens = np.array(old.level(0))
    save_vqvae(run, tiny_model(seed=1))  # a retrained VQ-VAE
    with pytest.raises(UserError, match="another VQ-VAE"):
        old.check_vqvae(run / "vqvae")
    encode_run(run, chunk_seconds=0.1)
    new = CodesCorpus(run / "codes")
    new.check_vqvae(run / "vqvae")
    assert new.fingerprint != old.fingerprint
    assert len(new.level(0)) == len(old_tokens) and not np.array_equal(np.asarray(new.level(0)), old_tokens)


def test_killed_run_keeps_the_previous_codes_intact(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    encode_run(run, chunk_seconds=0.1)
    before = {p.name: p.read_bytes() for p in (run / "codes").iterdir()}
    save_vqvae(run, tiny_model(seed=2))
    calls = []
    original = VQVAE.encode_long

    def dies_on_third_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(VQVAE, "encode_long", dies_on_third_file)
    with pytest.raises(KeyboardInterrupt):
        encode_run(run, chunk_seconds=0.1)
    after = {p.name: p.read_bytes() for p in (run / "codes").iterdir()}
    assert after == before  # same files, same bytes: no temporaries, no half index


# ----------------------------------------------------------------------------------------------
# The reader


def test_windows_carry_labels_offsets_and_the_aligned_upper_level(tmp_path):
    run = make_run(tmp_path)
    encode_run(run, chunk_seconds=0.1)
    corpus = CodesCorpus(run / "codes")
    rng = np.random.default_rng(0)
    batch = corpus.windows(level=1, n_ctx=64, batch_size=16, generator=rng, with_upper=True)
    assert batch.tokens.shape == (16, 64) and batch.upper.shape == (16, 32) and batch.tokens.dtype == torch.long
    assert batch.sample_length == 64 * 4
    assert "t1" not in batch.file_ids  # valid split stays out of training windows
    for row in range(16):
        entry = next(f for f in corpus.files if f["id"] == batch.file_ids[row])
        start = int(batch.offset[row]) // 4
        assert start % 2 == 0  # starts on a level-2 token
        level1 = corpus.file_codes(entry["id"], 1)
        level2 = corpus.file_codes(entry["id"], 2)
        assert torch.equal(batch.tokens[row], torch.from_numpy(level1[start : start + 64].astype(np.int64)))
        assert torch.equal(batch.upper[row], torch.from_numpy(level2[start // 2 : start // 2 + 32].astype(np.int64)))
        assert int(batch.total_length[row]) == entry["samples"]
        assert batch.genres[row] == entry["labels"].get("genre", "unknown")
        assert corpus.artists[int(batch.artist_ids[row])] == batch.artists[row]
    labels = batch.labels(max_bow_genre_size=2)
    assert labels.shape == (16, 6) and torch.all(labels[:, 2] == 256) and torch.all(labels[:, 5] == -1)
    assert torch.equal(labels[:, 1], batch.offset) and torch.equal(labels[:, 4], batch.genre_ids)
    # windows cover the files uniformly: the longest file (t2) is drawn most often
    many = corpus.windows(level=2, n_ctx=16, batch_size=3000, generator=rng)
    counts = {i: many.file_ids.count(i) for i in ("t0", "t2", "t3")}
    assert counts["t2"] > counts["t0"] > counts["t3"]


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="holds no codes"):
        CodesCorpus(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no codes"):
        CodesCorpus(tmp_path / "empty")
    run = make_run(tmp_path, seconds=(0.5, 0.4))
    encode_run(run, chunk_seconds=0.1)
    with pytest.raises(UserError, match="another VQ-VAE"):
        CodesCorpus(run / "codes", vqvae_fingerprint="0123456789abcdef")
    corpus = CodesCorpus(run / "codes")
    with pytest.raises(UserError, match="longer than every 'train' file"):
        corpus.windows(level=0, n_ctx=10_000, batch_size=1, generator=np.random.default_rng(0))
    with pytest.raises(UserError, match="multiple of 2"):
        corpus.windows(level=1, n_ctx=33, batch_size=1, generator=np.random.default_rng(0), with_upper=True)
    (run / "codes" / "level1.bin").write_bytes(b"\0\0")
    with pytest.raises(UserError, match="missing or incomplete"):
        corpus.level(1)


def test_stage_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    assert cli.main(["encode", "--run", str(run)]) == 2
    assert "run the data stage" in capsys.readouterr().err
    run = make_run(tmp_path)
    (run / "vqvae" / "last.pt").unlink()
    assert cli.main(["encode", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "No VQ-VAE at" in err and "make vqvae" in err  # names the stage to run first


def test_corpus_at_another_rate_is_resampled_to_the_vqvae_rate(tmp_path):
    run = make_run(tmp_path, seconds=(0.5,), sr=8000)
    encode_run(run, chunk_seconds=0.1)
    entry = CodesCorpus(run / "codes").files[0]
    assert entry["samples"] == 8000  # 0.5 s at 16 kHz
    assert entry["levels"][2]["length"] == 1000


def test_a_reference_part_comes_from_the_same_file_and_never_overlaps_its_window(tmp_path):
    """The track character's leakage test: the part a window's character is read from lies elsewhere in
    the same track, at every position of every file, including a file with room on one side only."""
    # level 2 (hop 8): t0 4000 tokens, t1 valid, t2 5200, t3 1300 (room on one side of most windows), t4 800 (none)
    run = make_run(tmp_path, seconds=(2.0, 0.7, 2.6, 0.65, 0.4))
    encode_run(run, chunk_seconds=0.5)
    corpus = CodesCorpus(run / "codes")
    n_ctx, R = 512, 400
    batch = corpus.windows(level=2, n_ctx=n_ctx, batch_size=4000, generator=np.random.default_rng(1), reference=R)
    assert batch.reference.shape == (4000, R) and batch.reference.dtype == torch.long
    assert set(batch.file_ids) == {"t0", "t2", "t3"}  # t4 holds a window but no part of 400 tokens beside it
    hop = corpus.hop_lengths[2]
    starts = {"t0": set(), "t2": set(), "t3": set()}
    for row in range(4000):
        start, r = int(batch.offset[row]) // hop, int(batch.reference_offset[row]) // hop
        codes = corpus.file_codes(batch.file_ids[row], 2)
        assert r + R <= start or r >= start + n_ctx, (start, r)
        assert 0 <= r and r + R <= len(codes)
        assert torch.equal(batch.reference[row], torch.from_numpy(codes[r : r + R].astype(np.int64)))
        starts[batch.file_ids[row]].add(start)
    # t3's windows start in [0, 389) or [400, 789): both ranges are drawn, the middle never
    assert min(starts["t3"]) < 20 and max(starts["t3"]) > 769 and not starts["t3"] & set(range(389, 400))
    assert max(starts["t0"]) > 4000 - n_ctx - 40 and min(starts["t0"]) < 40  # every start of a long file is used
    with pytest.raises(UserError, match="reference part of 5000"):
        corpus.windows(level=2, n_ctx=n_ctx, batch_size=1, generator=np.random.default_rng(0), reference=5000)
