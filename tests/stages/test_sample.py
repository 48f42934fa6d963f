"""Sample stage: chunked decoding, and long tracks through every stage."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from jukebox_lite.core.checkpoint import save_checkpoint
from jukebox_lite.cli import main
from jukebox_lite.core.config import PriorConfig
from jukebox_lite.models.prior import Prior
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.core.atomic import file_sha256
from jukebox_lite.core.config import SampleConfig
from jukebox_lite.algorithms.refining import refine
from jukebox_lite.models.checkpoints import load_refiner, load_vqvae, save_refiner
from jukebox_lite.runs import Run
from jukebox_lite.stages.sample import refine_decision
from tests.helpers import PRIOR_SHAPE, TINY_SR, synth_music, tiny_model, tiny_refiner_config, write_audio


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("chunk", [17, 64])
def test_chunked_decoding_equals_decoding_the_whole_track(level, chunk):
    model = tiny_model()
    codes = torch.randint(0, 16, (2, 301), generator=torch.Generator().manual_seed(level))
    whole = model.decode([None] * level + [codes], level=level)
    chunked = model.decode_long(codes, level, chunk_tokens=chunk)
    assert chunked.shape == whole.shape == (2, 1, 301 * model.hop_lengths[level])
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# The stage, on untrained tiny models: it is the plumbing that is tested here, not the music


GENRES, ARTISTS = ["house", "garage"], ["artist0", "artist1", "artist2"]
UPSAMPLER = dict(cond_down_t=1, cond_stride_t=2, cond_width=16, cond_depth=1)


def save_prior(run, level: int, fingerprint: str, **changes) -> None:
    cfg = PriorConfig(
        level=level, **PRIOR_SHAPE, bins=16, hop_length={2: 8, 1: 4, 0: 2}[level], sample_rate=TINY_SR, t_bins=8, min_duration=0.1,
        max_duration=5.0, **(UPSAMPLER if level < 2 else {}), **changes,
    )
    torch.manual_seed(level)
    model = Prior(cfg)
    config = dataclasses.asdict(cfg)
    if level == 2:
        config["hop_fraction"] = 0.125  # as checkpoints written before sampling settings moved to the recipe
    save_checkpoint(
        run / f"prior_level{level}" / "last.pt", "prior", config, model.state_dict(),
        step=3, genres=GENRES, artists=ARTISTS, vqvae_fingerprint=fingerprint,
    )


@pytest.fixture
def sampled_run(coded, tmp_path):
    run = Path(shutil.copytree(coded, tmp_path / "run"))
    fingerprint = load_vqvae(run / "vqvae").fingerprint()
    for level in (2, 1, 0):
        save_prior(run, level, fingerprint)
    torch.manual_seed(0)
    refiner = Refiner(tiny_refiner_config(), vqvae_fingerprint=fingerprint)
    torch.nn.init.normal_(refiner.equalizer.weight, std=0.01)  # the estimate is not the input itself
    save_refiner(run / "refiner" / "last.pt", refiner)
    return run


def sample(run, *args: str) -> int:
    windows = ["sample.hop_fraction_level2=0.5"]  # fewer top-level windows than the default 1/8: a faster test
    return main(["sample", "--run", str(run), "--seconds", "0.25", "--name", "t", *args, *windows])


def test_every_stage_is_written_and_audible(sampled_run):
    run = sampled_run
    assert sample(run, "--n", "2", "--genre", "garage", "--seed", "3", "--refine-steps", "2") == 0
    for k in range(2):
        folder = run / "samples" / f"t_{k}"
        for stage in ("level2", "level1", "level0", "refined"):
            audio, sr = sf.read(folder / f"{stage}.wav", dtype="float32")
            assert sr == TINY_SR and audio.shape == (TINY_SR // 4,) and np.isfinite(audio).all() and np.abs(audio).max() > 0
        codes = np.load(folder / "codes_level2.npy")
        assert codes.shape == (500,) and codes.max() < 16
        decoded = load_vqvae(run / "vqvae").decode([None, None, torch.from_numpy(codes).long()[None]], level=2)
        level2, _ = sf.read(folder / "level2.wav", dtype="float32")
        assert np.abs(decoded[0, 0, :4000].numpy() - level2).max() < 1e-4  # 16-bit WAV rounding
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["genre"] == "garage" and meta["seed"] == 3 and meta["checkpoints"]["prior_level0"]["step"] == 3
        assert meta["settings"]["hop_fraction_level2"] == 0.5 and meta["settings"]["refine_steps"] == 2  # recipe + flags
        assert set(meta["seconds_per_stage"]) == {"level2", "level1", "level0", "decode", "refine"}
        assert set(meta["upsampler_segments"]) == {"level1", "level0"} and meta["upsampler_segments"]["level0"] > 1  # auto
    first = np.load(run / "samples/t_0/codes_level2.npy")
    assert not np.array_equal(first, np.load(run / "samples/t_1/codes_level2.npy"))  # a batch of different tracks


def test_prime_opens_every_track_and_morph_runs(sampled_run, tmp_path):
    run = sampled_run
    (run / "refiner" / "last.pt").unlink()
    prime = write_audio(tmp_path / "intro.wav", synth_music(0.1, TINY_SR, seed=5, channels=1), TINY_SR)
    assert sample(run, "--fast", "--prime", str(prime), "--genre", "house", "--morph-to", "garage") == 0
    prime_audio, _ = sf.read(prime, dtype="float32")  # as written: 16-bit
    expected = load_vqvae(run / "vqvae").encode(torch.from_numpy(prime_audio)[None, None])[2]  # (1, 200)
    assert np.array_equal(np.load(run / "samples/t_0/codes_level2.npy")[:200], expected[0].numpy())
    assert not (run / "samples/t_0/refined.wav").exists()  # no refiner: said so, nothing faked
    assert sample(run, "--fast", "--prime", str(prime), "--genre", "house", "--morph-to", "garage", "--name", "again") == 0
    for stage in ("codes_level2.npy", "level1.wav"):  # seeded: repeatable
        assert (run / "samples/again_0" / stage).read_bytes() == (run / "samples/t_0" / stage).read_bytes()


def test_bad_requests_fail_in_one_sentence_before_any_work(sampled_run, capsys):
    run = sampled_run
    assert sample(run, "--genre", "techno") == 2
    assert "known genres: house, garage" in capsys.readouterr().err
    assert not (run / "samples").exists()
    assert main(["sample", "--run", str(run), "--seconds", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert sample(run, "--seconds", "9") == 2  # past the timing embeddings' 5 s
    assert "outside this prior's timing range [0.1, 5) s" in capsys.readouterr().err
    assert not (run / "samples").exists()
    assert sample(run, "--fast") == 2  # the refiner refines level 0, which --fast does not make
    assert "drop --fast" in capsys.readouterr().err
    assert sample(run, "sample.checkpoint=best") == 2  # these priors were saved without validation
    assert "No best.pt in" in capsys.readouterr().err
    assert sample(run, "sample.refine_chunk_length=64") == 2
    assert "sample.refine_chunk_length is 64; each chunk discards one receptive field" in capsys.readouterr().err
    for bad in ("0", "many", "1.5"):
        assert sample(run, f"sample.upsampler_segments={bad}") == 2
        assert "upsampler_segments" in capsys.readouterr().err
    assert sample(run, "sample.upsampler_overlap=0") == 2
    assert "sample.upsampler_overlap is 0.0; it must be in (0, 1]" in capsys.readouterr().err
    for bad in (["--temperature", "0"], ["--temperature", "nan"]):
        assert sample(run, *bad) == 2
        assert "temperature must be positive and finite" in capsys.readouterr().err
    for seconds in ("nan", "inf"):
        assert sample(run, "--seconds", seconds) == 2
        assert "both must be positive and finite" in capsys.readouterr().err
    assert not (run / "samples").exists()
    shutil.rmtree(run / "prior_level0")
    assert sample(run) == 2
    assert "No level-0 upsampler" in capsys.readouterr().err
    assert sample(run, "--fast", "--refine-steps", "1") == 2  # refiner still wants level 0
    capsys.readouterr()
    (run / "refiner" / "last.pt").unlink()
    assert sample(run, "--fast") == 0
    assert sample(run, "--fast") == 2  # the same name again: nothing is overwritten
    assert "already exists" in capsys.readouterr().err


def test_a_track_character_comes_from_a_recording_the_prime_or_the_corpus_and_meta_says_which(sampled_run, tmp_path, capsys):
    run = sampled_run
    (run / "refiner" / "last.pt").unlink()
    like = write_audio(tmp_path / "like.wav", synth_music(0.3, TINY_SR, seed=6, channels=1), TINY_SR)
    other = write_audio(tmp_path / "other.wav", synth_music(0.3, TINY_SR, seed=7, channels=1), TINY_SR)
    assert sample(run, "--fast", "--like", str(like)) == 2  # today's prior has no character to take
    assert "--like needs a top prior trained with a track character" in capsys.readouterr().err
    assert sample(run, "--fast", "--name", "plain") == 0
    assert json.loads((run / "samples/plain_0/meta.json").read_text())["character"] is None

    fingerprint = load_vqvae(run / "vqvae").fingerprint()
    save_prior(run, 2, fingerprint, character_tokens=16, character_width=8)
    state = torch.load(run / "prior_level2" / "last.pt", weights_only=False)
    for key in ("character.project.weight", "character.x_emb.weight"):  # as if trained: tracks differ, and so do the logits
        state["model"][key].normal_(std=1.0)
    torch.save(state, run / "prior_level2" / "last.pt")
    asked = {
        "drawn": ((), "drawn from the corpus's distribution"),
        "like": (("--like", str(like)), f"like '{like}'"),
        "mix": (("--like-mix", str(like), str(other)), f"between '{like}' and '{other}'"),
        "primed": (("--prime", str(like)), f"the prime's own ('{like}')"),
        "guided": (("--like", str(like), "--guidance", "2"), f"like '{like}'"),
    }
    for name, (args, says) in asked.items():
        assert sample(run, "--fast", "--n", "2", "--name", name, *args) == 0
        meta = json.loads((run / f"samples/{name}_0/meta.json").read_text())
        assert meta["character"].startswith(says), name
    codes = {name: np.load(run / f"samples/{name}_0/codes_level2.npy") for name in asked}
    assert not np.array_equal(codes["drawn"], codes["like"]) and not np.array_equal(codes["like"], codes["mix"])
    assert not np.array_equal(codes["like"], codes["guided"])
    assert json.loads((run / "samples/guided_0/meta.json").read_text())["settings"]["character_guidance"] == 2.0
    assert sample(run, "--fast", "--like", str(tmp_path / "missing.wav")) == 2
    assert "Reference recording" in capsys.readouterr().err
    assert sample(run, "--fast", "--guidance", "-1") == 2
    assert "character_guidance is -1.0" in capsys.readouterr().err


def judge(run, helpful: bool, weights: str = "last.pt", estimate_helpful: bool | None = None) -> None:
    """An eval-refiner report on `weights` (as eval-refiner writes it) with the given verdict, and one on
    the estimate alone unless `estimate_helpful` is None."""
    scores = {"mr_stft_distance": 1.0, "log_mel_distance": 0.4, "high_band_abs_error_db": 1.1}
    worse = {m: v * (0.5 if helpful else 2) for m, v in scores.items()}
    report = {"refiner_sha256": file_sha256(run / "refiner" / weights), "decoded": scores, "refined": worse,
              "verdict_metrics": list(scores), "helpful": helpful, "closer": {m: helpful for m in scores}}
    if estimate_helpful is not None:
        report["estimate"] = {m: v * (0.8 if estimate_helpful else 1.5) for m, v in scores.items()}
        report["estimate_closer"] = {m: estimate_helpful for m in scores} | {"si_sdr_db": estimate_helpful}  # one more metric
    (run / "refiner" / "eval.json").write_text(json.dumps(report))


def test_a_refiner_judged_unhelpful_is_not_applied_unless_asked(sampled_run, caplog):
    run = sampled_run
    judge(run, helpful=False)
    assert sample(run, "--refine-steps", "1") == 0
    meta = json.loads((run / "samples/t_0/meta.json").read_text())
    assert not (run / "samples/t_0/refined.wav").exists() and (run / "samples/t_0/level0.wav").is_file()
    assert "makes held-out audio worse (mr_stft_distance 1 → 2" in meta["refined"] and "refine" not in meta["seconds_per_stage"]
    assert "sample.refine=always applies it anyway" in caplog.text
    assert sample(run, "--refine-steps", "1", "--name", "forced", "sample.refine=always") == 0
    assert (run / "samples/forced_0/refined.wav").is_file() and (run / "samples/forced_0/level0.wav").is_file()
    judge(run, helpful=False, estimate_helpful=True)
    assert sample(run, "--refine-steps", "1", "--name", "estimate") == 0  # refined by the estimate alone
    level0 = torch.from_numpy(sf.read(run / "samples/estimate_0/level0.wav", dtype="float32")[0])[None, None]
    expected = refine(load_refiner(run / "refiner"), level0, strength=0.0)[0, 0].numpy()
    np.testing.assert_allclose(sf.read(run / "samples/estimate_0/refined.wav", dtype="float32")[0], expected, atol=2e-3)
    assert not np.allclose(expected, level0[0, 0].numpy(), atol=2e-3)
    assert "refining with the estimate alone" in json.loads((run / "samples/estimate_0/meta.json").read_text())["refined"]


def test_refine_decision_follows_the_verdict_on_the_very_weights_loaded(sampled_run):
    run, auto = Run(sampled_run), SampleConfig()
    assert refine_decision(run, auto)[0] and "has not judged last.pt" in refine_decision(run, auto)[2]
    judge(sampled_run, helpful=True)
    assert refine_decision(run, auto) == (True, None, "eval-refiner found the refiner helps (mr_stft_distance 1 → 0.5, "
                                                      "log_mel_distance 0.4 → 0.2, high_band_abs_error_db 1.1 → 0.55); refining")
    assert refine_decision(run, SampleConfig(refine="never"))[0] is False
    judge(sampled_run, helpful=False)
    assert refine_decision(run, auto)[0] is False and refine_decision(run, SampleConfig(refine="always"))[0]
    judge(sampled_run, helpful=False, estimate_helpful=False)
    assert refine_decision(run, auto)[0] is False
    judge(sampled_run, helpful=False, estimate_helpful=True)  # only the detail made it worse: the estimate alone is applied
    applied, strength, why = refine_decision(run, auto)
    assert applied and strength == 0.0 and "its estimate alone closer on 4 of 4: mr_stft_distance 1 → 0.8" in why
    judge(sampled_run, helpful=True, estimate_helpful=True)  # both help; the estimate alone on more metrics
    applied, strength, why = refine_decision(run, auto)
    assert applied and strength == 0.0 and "estimate alone closer on 4 of 4" in why and "with its detail on 3 of 4" in why
    judge(sampled_run, helpful=True, estimate_helpful=False)
    assert refine_decision(run, auto)[:2] == (True, None)
    shutil.copy(sampled_run / "refiner" / "last.pt", sampled_run / "refiner" / "best.pt")
    with open(sampled_run / "refiner" / "best.pt", "ab") as f:
        f.write(b"other weights")  # another file: the verdict on last.pt says nothing about it
    assert refine_decision(run, SampleConfig(checkpoint="best"))[0]
    assert "has not judged best.pt" in refine_decision(run, SampleConfig(checkpoint="best"))[2]
    (sampled_run / "refiner" / "last.pt").unlink()
    (sampled_run / "refiner" / "best.pt").unlink()
    assert refine_decision(run, auto) == (False, None, f"no refiner in {run.refiner.path}: the samples get no refined.wav "
                                                 "(train one with make refiner)")
