"""Prior stage: the top prior and an upsampler learn real codes; resume, annealing, fine-tuning, vocabulary, errors."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jukebox_lite import cli
from jukebox_lite.core.checkpoint import load_checkpoint, save_checkpoint
from jukebox_lite.algorithms.codes import CodesCorpus
from jukebox_lite.stages.encode import encode_run
from jukebox_lite.core.config import load_config
from jukebox_lite.core.errors import UserError
from jukebox_lite.algorithms.sampling import morph, sample_codes
from jukebox_lite.models.checkpoints import load_prior
from jukebox_lite.algorithms.vocabulary import PriorVocabulary
from jukebox_lite.models.prior import Prior
from jukebox_lite.stages.train_prior import PriorTask, train_prior
from jukebox_lite.algorithms.training import learning_rate
from tests.helpers import PRIOR_SHAPE, TINY_SR, save_vqvae, varied_vqvae

TRAIN = dict(batch_size=8, lr=3e-3, warmup_steps=5, log_every=5, media_every=0, ema=0.9, workers=0, eval_every=20, eval_windows=8)
RECIPE = {
    "name": "tiny",
    "seed": 0,
    # tests.helpers.tiny_model: 16 kHz, hops 2 / 4 / 8, 16 codes per level
    "data": {"sample_rate": TINY_SR},
    "vqvae": {"downs_t": [1, 1, 1], "l_bins": 16},
    "prior_level2": {**PRIOR_SHAPE, "t_bins": 8, "min_duration": 0.5, "max_duration": 5.0, "train": {**TRAIN, "steps": 80}},
    "prior_level1": {**PRIOR_SHAPE, "cond_down_t": 1, "cond_stride_t": 2, "cond_width": 16,
                     "cond_depth": 1, "train": {**TRAIN, "steps": 60}},
}


@pytest.fixture
def run(coded, tmp_path) -> Path:
    """A private copy of the coded run: RUN/data, RUN/vqvae, RUN/codes; no priors yet."""
    return Path(shutil.copytree(coded, tmp_path / "run"))


def recipe(tmp_path: Path, *overrides: str):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return load_config(path, list(overrides))


def unigram_entropy(run: Path, level: int) -> float:
    """Nats per token of the codes' own frequencies: the best a model that ignores context can do."""
    counts = np.bincount(np.asarray(CodesCorpus(run / "codes").level(level)), minlength=16)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0, "audio": 0})
    events.Reload()
    tags = events.Tags()
    out = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags["scalars"]}
    out.update({tag: [(e.step, 0.0) for e in events.Audio(tag)] for tag in tags["audio"]})
    return out


# ----------------------------------------------------------------------------------------------
# Learning


def test_top_prior_with_labels_learns_and_stores_its_vocabulary(run, tmp_path):
    cfg = recipe(tmp_path, "prior_level2.train.media_every=40")
    result = train_prior(cfg, run, level=2)
    assert result.step == 80 and len(result.losses) == 80
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-10:])
    assert first > 2.6  # about ln 16: it starts knowing nothing
    assert last < unigram_entropy(run, 2) - 0.5  # it learned more than how often each code occurs

    out = run / "prior_level2"
    state = load_checkpoint(out, "prior")
    assert state["step"] == 80 and state["genres"] == ["house", "unknown"]
    assert state["artists"] == ["artist0", "artist1", "unknown"]
    assert state["vqvae_fingerprint"] == CodesCorpus(run / "codes").fingerprint
    assert (out / "config.yaml").is_file()
    logged = scalars(out)
    for tag in ("train/loss", "train/bits_per_token", "train/accuracy", "train/lr", "train/grad_norm"):
        assert [step for step, _ in logged[tag]] == list(range(5, 81, 5)), tag
    loss, bits = dict(logged["train/loss"]), dict(logged["train/bits_per_token"])
    assert bits[80] == pytest.approx(loss[80] / np.log(2), rel=1e-5)
    assert 0.3 < dict(logged["train/accuracy"])[80] <= 1.0
    assert [step for step, _ in logged["audio/sample"]] == [40, 80] and "audio/corpus" in logged
    valid = dict(logged["valid/loss"])
    assert sorted(valid) == [20, 40, 60, 80]
    assert valid[80] < unigram_entropy(run, 2) - 0.5  # on the held-out file too, beyond the codes' frequencies
    assert {"valid/bits_per_token", "valid/accuracy", "valid/gap"} <= set(logged)
    best = load_checkpoint(out / "best.pt", "prior")  # loads as a prior, with the vocabulary sampling needs
    assert best["valid_loss"] == pytest.approx(min(valid.values()), rel=1e-5) and best["genres"] == state["genres"]

    # the sample stage's side: the EMA prior, labels from genre and artist names
    prior = load_prior(out)
    vocab = PriorVocabulary.load(out)
    labels = torch.tensor([[TINY_SR * 2, 0, 64 * 8, vocab.artist_id("artist1"), vocab.genre_id("house")]])
    codes = sample_codes(prior, 1, 32, labels=labels, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (1, 32) and 0 <= int(codes.min()) and int(codes.max()) < 16
    with pytest.raises(UserError, match=r"genre 'techno' is unknown to this prior; known genres: house, unknown\."):
        vocab.genre_id("techno")


def test_upsampler_learns_from_the_level_above(run, tmp_path):
    result = train_prior(recipe(tmp_path), run, level=1)
    assert result.step == 60
    assert np.mean(result.losses[-10:]) < unigram_entropy(run, 1) - 0.5
    state = load_checkpoint(run / "prior_level1", "prior")
    assert state["config"]["level"] == 1 and any(k.startswith("conditioner_blocks.0.") for k in state["model"])
    # the upper codes matter: the trained upsampler does worse when they are shuffled
    prior = load_prior(run / "prior_level1")
    corpus = CodesCorpus(run / "codes")
    windows = corpus.windows(1, 64, 16, np.random.default_rng(1), with_upper=True)
    labels = windows.labels(1)
    labels[:, 3], labels[:, 4] = windows.artist_ids, windows.genre_ids
    with torch.no_grad():
        right = prior(windows.tokens, windows.upper, labels)[1]["loss"]
        wrong = prior(windows.tokens, windows.upper.roll(1, dims=0), labels)[1]["loss"]
    assert wrong > right + 0.2


def test_forward_is_the_training_objective():
    model = Prior(load_config(None, [f"prior_level2.{k}={v}" for k, v in PRIOR_SHAPE.items()] + [
        "prior_level2.labels=false"]).prior_level2)
    tokens = torch.randint(0, 16, (2, 64))
    logits, metrics = model(tokens)
    nats = metrics["loss"]
    assert torch.allclose(nats, torch.nn.functional.cross_entropy(model.logits(tokens).flatten(0, 1), tokens.flatten()))
    assert metrics["bits_per_token"] == pytest.approx(nats.item() / np.log(2))
    assert 0 <= float(metrics["accuracy"]) <= 1 and not metrics["accuracy"].requires_grad


def test_layer_checkpointing_recomputes_layers_and_gives_the_same_gradients():
    shape = [f"prior_level1.{k}={v}" for k, v in PRIOR_SHAPE.items()] + ["prior_level1.cond_depth=1", "prior_level1.cond_width=8"]
    models = {}
    for flag in (False, True):
        torch.manual_seed(0)
        models[flag] = Prior(load_config(None, [*shape, f"prior_level1.checkpoint_layers={flag}"]).prior_level1)
    tokens, upper = torch.randint(0, 16, (2, 64)), torch.randint(0, 16, (2, 16))
    labels = torch.tensor([[0, 0, 0, 1, 0], [0, 0, 0, 2, 1]])
    calls = {False: 0, True: 0}
    for flag, model in models.items():
        block = model.prior.transformer._attn_mods[0]
        block.forward = lambda *args, f=flag, run=block.forward: calls.__setitem__(f, calls[f] + 1) or run(*args)
        loss = model(tokens, upper, labels)[1]["loss"]
        loss.backward()
    assert calls == {False: 1, True: 2}  # the checkpointed layer ran again in backward
    for (name, a), b in zip(models[False].named_parameters(), models[True].parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


# ----------------------------------------------------------------------------------------------
# Resume, annealing, fine-tuning


def test_resume_continues_the_same_run(run, tmp_path):
    other = Path(shutil.copytree(run, tmp_path / "other"))
    whole = train_prior(recipe(tmp_path, "prior_level2.train.steps=12"), run, level=2)
    first = train_prior(recipe(tmp_path, "prior_level2.train.steps=7"), other, level=2)
    rest = train_prior(recipe(tmp_path, "prior_level2.train.steps=12"), other, level=2)
    assert (first.step, rest.step, len(rest.losses)) == (7, 12, 5)
    assert np.allclose(first.losses + rest.losses, whole.losses, rtol=1e-5)
    a, b = load_checkpoint(run / "prior_level2"), load_checkpoint(other / "prior_level2")
    assert all(torch.allclose(a["ema"][k], b["ema"][k], atol=1e-6) for k in a["ema"])
    # the output layer is the token embedding: its average is saved under both names, not the live weight under one
    assert torch.equal(a["ema"]["prior.x_out.weight"], a["ema"]["prior.x_emb.weight"])
    assert not torch.equal(a["ema"]["prior.x_emb.weight"], a["model"]["prior.x_emb.weight"])


def test_micro_batches_accumulate_into_the_same_update(run, tmp_path):
    other = Path(shutil.copytree(run, tmp_path / "other"))
    whole = train_prior(recipe(tmp_path, "prior_level2.train.steps=6"), run, level=2)
    passes = train_prior(recipe(tmp_path, "prior_level2.train.steps=6", "prior_level2.train.micro_batch=2"), other, level=2)
    assert np.allclose(passes.losses, whole.losses, rtol=1e-5)
    a, b = load_checkpoint(run / "prior_level2"), load_checkpoint(other / "prior_level2")
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-5) for k in a["model"])
    with pytest.raises(UserError, match=r"micro_batch is 3, which does not divide each rank's share of batch_size \(8 / 1 ranks = 8\)"):
        train_prior(recipe(tmp_path, "prior_level2.train.steps=8", "prior_level2.train.micro_batch=3"), other, level=2)


def test_annealing_switched_on_later_ends_at_lr_zero_and_the_stage_stops(run, tmp_path):
    train_prior(recipe(tmp_path, "prior_level2.train.steps=6"), run, level=2)  # no annealing yet
    anneal = ["prior_level2.train.steps=1000", "prior_level2.train.anneal_start=8", "prior_level2.train.anneal_steps=4",
              "prior_level2.train.log_every=1"]
    cfg = recipe(tmp_path, *anneal)
    result = train_prior(cfg, run, level=2)
    assert result.step == 11 and len(result.losses) == 5  # steps 7..11; update 12 would have LR 0
    assert learning_rate(cfg.prior_level2.train, 12) == 0.0 < learning_rate(cfg.prior_level2.train, 11)
    lrs = dict(scalars(run / "prior_level2")["train/lr"])
    assert lrs[8] == pytest.approx(3e-3) and lrs[11] == pytest.approx(3e-3 * 0.25) and 12 not in lrs
    again = train_prior(cfg, run, level=2)
    assert again.step == 11 and again.losses == []  # the LR reached zero: nothing more to do


def test_imported_checkpoint_is_fine_tuned_not_replaced(run, tmp_path):
    cfg = recipe(tmp_path, "prior_level1.train.steps=2", "prior_level1.train.lr=0.000000001", "prior_level1.train.ema=0")
    torch.manual_seed(123)
    imported = Prior(cfg.prior_level1)
    config = dataclasses.asdict(cfg.prior_level1)
    save_checkpoint(run / "prior_level1" / "last.pt", "prior", config, imported.state_dict(), step=0)  # as import-jukebox
    result = train_prior(cfg, run, level=1)
    assert result.step == 2
    state = load_checkpoint(run / "prior_level1", "prior")
    assert "optimizer" in state and state["genres"] == ["house", "unknown"]
    for key, value in imported.state_dict().items():
        assert torch.allclose(state["model"][key], value, atol=1e-5), key


LORA = ["prior_level2.train.lora={rank: 4, alpha: 8.0}", "prior_level2.train.lr=0.01"]


def imported(run: Path, cfg, seed: int = 123) -> Prior:
    """A prior saved as import-jukebox saves one (no optimizer, step 0) into RUN/prior_level2/last.pt."""
    torch.manual_seed(seed)
    prior = Prior(cfg.prior_level2)
    config = dataclasses.asdict(dataclasses.replace(cfg.prior_level2, train=dataclasses.replace(cfg.prior_level2.train, lora=None)))
    save_checkpoint(run / "prior_level2" / "last.pt", "prior", config, prior.state_dict(), step=0)
    return prior


def test_a_full_fine_tune_of_an_import_learns_the_corpus(run, tmp_path):
    cfg = recipe(tmp_path, "prior_level2.train.lr=0.01", "prior_level2.train.steps=30")
    base = imported(run, cfg)
    result = train_prior(cfg, run, level=2)
    assert np.mean(result.losses[-5:]) < unigram_entropy(run, 2) - 0.5
    trained = load_checkpoint(run / "prior_level2", "prior")["model"]
    assert set(trained) == set(base.state_dict()) and not (run / "prior_level2" / "base.pt").exists()  # every weight trains


def test_lora_fine_tunes_an_import_keeping_it_frozen_and_samples_merged(run, tmp_path):
    cfg = recipe(tmp_path, *LORA, "prior_level2.train.steps=40")
    base = imported(run, cfg)
    folder = run / "prior_level2"
    base_bytes = (folder / "last.pt").read_bytes()
    result = train_prior(cfg, run, level=2)
    assert (folder / "base.pt").read_bytes() == base_bytes  # the import, moved aside untouched
    assert np.mean(result.losses[-5:]) < unigram_entropy(run, 2) - 0.5  # it learns the corpus

    state = load_checkpoint(folder, "prior")
    assert state["base"]["file"] == "base.pt" and "optimizer" in state
    kept = set(state["model"])
    assert kept and all("lora_" in k or "emb" in k or k == "prior.x_out.weight" for k in kept)
    assert set(state["ema"]) == kept and torch.equal(state["ema"]["prior.x_out.weight"], state["ema"]["prior.x_emb.weight"])
    lora = cfg.prior_level2.train.lora
    adapters = sum(lora.rank * sum(value.shape) for key, value in base.state_dict().items() if key.endswith(".w"))
    embeddings = sum(p.numel() for p in base.embedding_parameters())
    assert sum(state["model"][k].numel() for k in kept if k != "prior.x_out.weight") == adapters + embeddings
    assert set(load_checkpoint(folder / "best.pt", "prior")["model"]) == kept

    # sampling merges: the loaded prior is a plain one, equal to base weights + the EMA adapters applied by hand
    merged = load_prior(folder)
    assert set(merged.state_dict()) == set(base.state_dict())
    by_hand = Prior(cfg.prior_level2).eval()
    by_hand.load_state_dict(base.state_dict())
    by_hand.add_adapters(cfg.prior_level2.train.lora)
    by_hand.load_state_dict(state["ema"], strict=False)
    codes, y = torch.randint(0, 16, (2, 64)), torch.tensor([[TINY_SR * 2, 0, TINY_SR, 0, 0]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(merged.logits(codes, labels=y), by_hand.logits(codes, labels=y), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(merged.logits(codes, labels=y), base.eval().logits(codes, labels=y), atol=1e-3)
    for key, value in base.state_dict().items():  # the frozen weights: unchanged by training
        if key not in kept:
            assert torch.equal(by_hand.state_dict()[key], value), key


CHARACTER = ["prior_level2.character_tokens=16", "prior_level2.character_width=8"]


def test_a_track_character_prior_learns_says_what_its_character_is_worth_and_resumes_only_as_itself(run, tmp_path):
    result = train_prior(recipe(tmp_path, *CHARACTER, "prior_level2.train.media_every=40"), run, level=2)
    assert np.mean(result.losses[-10:]) < unigram_entropy(run, 2) - 0.5
    logged = scalars(run / "prior_level2")
    assert [step for step, _ in logged["valid/bits_per_token_without_character"]] == [20, 40, 60, 80]
    assert "audio/sample" in logged  # sampled with the media window's own character
    prior = load_prior(run / "prior_level2")
    assert int(prior.character.batches_seen) == 80 and prior.character.project.weight.abs().sum() > 0
    drawn = prior.character.draw(2, torch.Generator().manual_seed(0))
    assert drawn.shape == (2, 8) and torch.isfinite(drawn).all()
    with pytest.raises(UserError, match="trained with character_tokens 16 and character_width 8, the recipe asks for 0"):
        train_prior(recipe(tmp_path, "prior_level2.train.steps=100"), run, level=2)


def test_a_lora_fine_tune_gives_an_import_a_track_character_that_trains_whole(run, tmp_path):
    imported(run, recipe(tmp_path, *LORA))  # an import has no character
    cfg = recipe(tmp_path, *LORA, *CHARACTER, "prior_level2.train.steps=20")
    train_prior(cfg, run, level=2)
    state = load_checkpoint(run / "prior_level2", "prior")
    encoder = {f"character.{k}" for k in Prior(cfg.prior_level2).character.state_dict()}
    assert encoder <= set(state["model"])  # its weights and statistics are saved with the adapters
    merged = load_prior(run / "prior_level2")
    assert merged.character.project.weight.abs().sum() > 0 and int(merged.character.batches_seen) == 20  # trained from zero
    codes = sample_codes(merged, 1, 32, labels=torch.tensor([[TINY_SR * 2, 0, 64 * 8, 0, 0]]),
                         character=merged.character.draw(1), generator=torch.Generator().manual_seed(0))
    assert codes.shape == (1, 32)


def test_export_writes_a_lora_prior_merged_into_one_file_that_needs_no_base(run, tmp_path, capsys):
    cfg = recipe(tmp_path, *LORA, "prior_level2.train.steps=6")
    imported(run, cfg)
    train_prior(cfg, run, level=2)
    assert cli.main(["export", "--run", str(run), "--level", "2", "--out", str(tmp_path / "shared")]) == 0
    out = tmp_path / "shared" / "run-prior-level2.pt"  # named after the run folder
    state = load_checkpoint(out, "prior")
    assert "base" not in state and "optimizer" not in state and state["genres"] == ["house", "unknown"]
    assert state["config"]["train"]["lora"] is None and state["vqvae_fingerprint"]
    codes, y = torch.randint(0, 16, (2, 64)), torch.tensor([[TINY_SR * 2, 0, TINY_SR, 0, 0]] * 2)
    with torch.no_grad():
        expected = load_prior(run / "prior_level2").logits(codes, labels=y)
        (run / "prior_level2" / "base.pt").unlink()  # the export stands alone
        torch.testing.assert_close(load_prior(out).logits(codes, labels=y), expected)
    assert cli.main(["export", "--run", str(run), "--out", str(out.parent)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_lora_resumes_exactly_and_refuses_a_changed_base_or_other_adapters(run, tmp_path, capsys):
    other = Path(shutil.copytree(run, tmp_path / "other"))
    for folder in (run, other):
        imported(folder, recipe(tmp_path, *LORA))
    whole = train_prior(recipe(tmp_path, *LORA, "prior_level2.train.steps=10"), run, level=2)
    first = train_prior(recipe(tmp_path, *LORA, "prior_level2.train.steps=6"), other, level=2)
    rest = train_prior(recipe(tmp_path, *LORA, "prior_level2.train.steps=10"), other, level=2)
    assert (first.step, rest.step) == (6, 10)
    assert np.allclose(first.losses + rest.losses, whole.losses, rtol=1e-5)
    a, b = load_checkpoint(run / "prior_level2"), load_checkpoint(other / "prior_level2")
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-6) for k in a["model"])

    before = (run / "prior_level2" / "last.pt").read_bytes()
    err = cli_error(run, tmp_path, capsys, 2, *LORA, "prior_level2.train.lora.rank=2", "prior_level2.train.steps=20")
    assert "was trained with the adapters" in err and "set prior_level2.train.lora back" in err
    imported(run, recipe(tmp_path), seed=7)  # another prior at last.pt ...
    (run / "prior_level2" / "last.pt").replace(run / "prior_level2" / "base.pt")  # ... swapped in as the base
    (run / "prior_level2" / "last.pt").write_bytes(before)
    err = cli_error(run, tmp_path, capsys, 2, *LORA, "prior_level2.train.steps=20")
    assert "is not the prior the adapters" in err and "fingerprint changed" in err
    with pytest.raises(UserError, match="is not the prior the adapters"):
        load_prior(run / "prior_level2")
    assert (run / "prior_level2" / "last.pt").read_bytes() == before  # nothing lost


def test_lora_under_bf16_keeps_the_frozen_matrices_in_bf16_and_the_adapters_in_float32(run, tmp_path, monkeypatch):
    cfg = recipe(tmp_path, *LORA, "prior_level2.train.steps=8", "prior_level2.train.precision=bf16")
    imported(run, cfg)
    dtypes = {}
    original = PriorTask.loss

    def loss(self, model, batch):  # what the loop trains: the bare model, or DDP's around it
        for name, p in model.named_parameters():
            dtypes[name] = (p.dtype, p.requires_grad)
        return original(self, model, batch)

    monkeypatch.setattr(PriorTask, "loss", loss)
    result = train_prior(cfg, run, level=2)
    assert result.step == 8 and np.isfinite(result.losses).all()
    assert {d for name, (d, trains) in dtypes.items() if not trains and name.endswith(".w")} == {torch.bfloat16}
    assert {d for d, trains in dtypes.values() if trains} == {torch.float32}
    assert {v.dtype for v in load_checkpoint(run / "prior_level2", "prior")["model"].values()} == {torch.float32}


def test_lora_with_micro_batches_on_two_torchrun_ranks_matches_one_process(run, tmp_path):
    """DDP skips the gradient all-reduce on every pass but a rank's last (no_sync) and ignores the frozen base."""
    other = Path(shutil.copytree(run, tmp_path / "other"))
    overrides = [*LORA, "prior_level2.train.steps=4", "prior_level2.train.micro_batch=2", "prior_level2.train.eval_every=0"]
    for folder in (run, other):
        imported(folder, recipe(tmp_path, *overrides))
    train_prior(recipe(tmp_path, *overrides), run, level=2)
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "--",
               str(Path(sys.executable).parent / "jukebox-lite"), "train-prior", "--level", "2", "--config",
               str(tmp_path / "tiny.yaml"), "--run", str(other), *overrides]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_checkpoint(run / "prior_level2"), load_checkpoint(other / "prior_level2")
    assert a["step"] == b["step"] == 4 and set(a["model"]) == set(b["model"])
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-5) for k in a["model"])
    base = load_checkpoint(run / "prior_level2" / "base.pt")["model"]
    assert not torch.allclose(b["model"]["prior.x_emb.weight"], base["prior.x_emb.weight"], atol=1e-4)  # it trained


STYLES = ["prior_level2.n_genres=4", "prior_level2.n_artists=6", "prior_level2.train.steps=1",
          "prior_level2.train.lr=0.000000001", "prior_level2.train.ema=0"]


@pytest.mark.parametrize("lora", [[], LORA[:1]], ids=["full", "lora"])
def test_styles_give_the_corpus_names_rows_of_their_own_started_from_named_imported_ones(run, tmp_path, lora):
    ids = tmp_path / "ids"  # as OpenAI's jukebox/data/ids: lines name;id
    ids.mkdir()
    (ids / "v2_genre_ids.txt").write_text("unknown;0\nhouse;1\n")
    cfg = recipe(tmp_path, *STYLES, *lora, "prior_level2.styles.genres={house: House}", f"prior_level2.styles.ids={ids}")
    torch.manual_seed(0)
    original = Prior(dataclasses.replace(cfg.prior_level2, n_genres=2, n_artists=3, styles=None))  # the import's rows
    config = dataclasses.asdict(dataclasses.replace(cfg.prior_level2, n_genres=2, n_artists=3, styles=None,
                                                    train=dataclasses.replace(cfg.prior_level2.train, lora=None)))
    save_checkpoint(run / "prior_level2" / "last.pt", "prior", config, original.state_dict(), step=0)
    train_prior(cfg, run, level=2)
    if lora:  # resumed: the base grows the same way again, under the adapters' checkpoint
        assert train_prior(recipe(tmp_path, *STYLES, *lora, "prior_level2.train.steps=2", "prior_level2.styles.genres={house: House}",
                                  f"prior_level2.styles.ids={ids}"), run, level=2).step == 2
        assert load_prior(run / "prior_level2").y_emb.bow_genre_emb.emb.weight.shape[0] == 4

    state = load_checkpoint(run / "prior_level2", "prior")
    assert state["genres"] == ["openai_genre_0", "openai_genre_1", "house", "unknown"]
    assert state["artists"][:3] == ["openai_artist_0", "openai_artist_1", "openai_artist_2"] and len(state["artists"]) > 3
    genres, imported = state["model"]["y_emb.bow_genre_emb.emb.weight"], original.state_dict()["y_emb.bow_genre_emb.emb.weight"]
    torch.testing.assert_close(genres[:2], imported, atol=1e-5, rtol=0)  # the imported styles stay
    torch.testing.assert_close(genres[2], imported[1], atol=1e-5, rtol=0)  # house ← the imported "house"
    torch.testing.assert_close(genres[3], imported[0], atol=1e-5, rtol=0)  # unlisted ← styles.default (0)
    artists = state["model"]["y_emb.artist_emb.emb.weight"]
    imported_artists = original.state_dict()["y_emb.artist_emb.emb.weight"]
    for row in range(3, len(state["artists"])):
        torch.testing.assert_close(artists[row], imported_artists[0], atol=1e-5, rtol=0)
    assert PriorVocabulary.load(run / "prior_level2").genre_id("openai_genre_1") == 1  # the imported style samples by name


@pytest.mark.parametrize("style, reason", [
    ("{house: 7}", "styles.genres: id 7 for 'house' is outside the imported prior's 2 genre rows"),
    ("{house: rock}", "styles.genres names 'rock' for 'house'; set styles.ids to OpenAI's id files"),
    ("{jazz: 1}", "styles.genres names 'jazz', which is not a genre of this corpus"),
])
def test_bad_styles_are_refused_in_one_sentence_before_training(run, tmp_path, capsys, style, reason):
    cfg = recipe(tmp_path, *STYLES)
    config = dataclasses.asdict(dataclasses.replace(cfg.prior_level2, n_genres=2, n_artists=3))
    save_checkpoint(run / "prior_level2" / "last.pt", "prior", config, Prior(dataclasses.replace(cfg.prior_level2, n_genres=2, n_artists=3)).state_dict(), step=0)
    before = (run / "prior_level2" / "last.pt").read_bytes()
    err = cli_error(run, tmp_path, capsys, 2, *STYLES, f"prior_level2.styles.genres={style}")
    assert reason in err
    err = cli_error(run, tmp_path, capsys, 2, *STYLES, "prior_level2.styles.genres={house: rock}", f"prior_level2.styles.ids={tmp_path / 'none'}")
    assert "No OpenAI genre id file at" in err
    assert (run / "prior_level2" / "last.pt").read_bytes() == before


def torchrun(run: Path, tmp_path: Path, *overrides: str) -> None:
    """train-prior --level 2 on two gloo ranks under torchrun (the recipe: tmp_path/tiny.yaml)."""
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "--",
               str(Path(sys.executable).parent / "jukebox-lite"), "train-prior", "--level", "2", "--config",
               str(tmp_path / "tiny.yaml"), "--run", str(run), *overrides]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_fsdp_on_two_torchrun_ranks_matches_one_process_and_resumes_on_one(run, tmp_path):
    other = Path(shutil.copytree(run, tmp_path / "other"))
    train_prior(recipe(tmp_path, "prior_level2.train.steps=4"), run, level=2)  # one process, whole model
    fsdp = ["prior_level2.train.sharding=fsdp"]
    recipe(tmp_path)
    torchrun(other, tmp_path, *fsdp, "prior_level2.train.steps=2")  # sharded over two ranks, validated at step 2
    folder = other / "prior_level2"
    state = load_checkpoint(folder, "prior")
    assert state["sharded"] == "last.shards-000000002" and state["model"] == {} and (folder / state["sharded"]).is_dir()
    assert load_checkpoint(folder / "best.pt", "prior")["step"] == 2  # gathered whole from the shards
    assert train_prior(recipe(tmp_path, *fsdp, "prior_level2.train.steps=4"), other, level=2).step == 4  # on one process
    assert sorted(p.name for p in folder.glob("last.shards-*")) == ["last.shards-000000004"]
    a, b = load_prior(run / "prior_level2"), load_prior(folder)  # the EMA weights, read from the shards for b
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), name
    (folder / "last.shards-000000004").rename(tmp_path / "moved")  # the shards last.pt names are gone
    with pytest.raises(UserError, match="last.shards-000000004', which is missing; put it back.$"):
        load_prior(folder)
    with pytest.raises(UserError, match="which is missing; put it back or move last.pt away.$"):
        train_prior(recipe(tmp_path, *fsdp, "prior_level2.train.steps=6"), other, level=2)


def test_an_imported_lyrics_prior_fine_tunes_with_lora_on_codes_without_lyrics_and_samples(run, tmp_path):
    """OpenAI's 1b_lyrics layout (a lyric prefix, attn_order 12: layer 15 reads the prefix) at tiny sizes: our
    corpus has no lyrics, so the prefix is all padding; the adapters learn the codes, and long tracks sample
    window after window with the prefix in each."""
    lyrics = ["prior_level2.n_tokens=8", "prior_level2.n_vocab=5", "prior_level2.attn_order=12", "prior_level2.depth=16",
              "prior_level2.width=16", "prior_level2.train.media_every=1"]
    cfg = recipe(tmp_path, *LORA, *lyrics, "prior_level2.train.steps=30")
    imported(run, cfg)
    result = train_prior(cfg, run, level=2)
    assert np.mean(result.losses[-5:]) < unigram_entropy(run, 2) - 0.5
    prior = load_prior(run / "prior_level2")
    assert prior.cfg.n_tokens == 8 and prior.attn_funcs[15] == 7
    y = torch.tensor([[TINY_SR * 4, 0, TINY_SR, 0, 0]])
    for labels in (y, torch.cat([y, torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4]])], dim=1)):  # no lyrics, lyrics
        codes = sample_codes(prior, 1, 96, labels=labels, generator=torch.Generator().manual_seed(0))  # 2 windows
        assert codes.shape == (1, 96) and 0 <= codes.min() and codes.max() < 16
    primed = sample_codes(prior, 1, 80, labels=y, prime=codes[:, :20], generator=torch.Generator().manual_seed(1))
    assert torch.equal(primed[:, :20], codes[:, :20]) and primed.shape == (1, 80)  # priming keeps its codes
    other = y.clone()
    other[:, 4] = 1  # the other genre
    morphed = sample_codes(prior, 1, 80, labels=morph(y, other, 80), generator=torch.Generator().manual_seed(2))
    assert morphed.shape == (1, 80) and morphed.max() < 16


def test_lora_needs_an_import_and_refuses_a_full_run(run, tmp_path, capsys):
    err = cli_error(run, tmp_path, capsys, 2, *LORA)
    assert "fine-tunes an imported prior" in err and "import-jukebox --prior-level-2" in err
    train_prior(recipe(tmp_path, "prior_level2.train.steps=2"), run, level=2)
    err = cli_error(run, tmp_path, capsys, 2, *LORA)
    assert "trains every weight" in err
    err = cli_error(run, tmp_path, capsys, 2, "prior_level2.train.lora.rank=64")
    assert "more than the narrowest adapted projection" in err


# ----------------------------------------------------------------------------------------------
# Errors: one sentence each, nothing lost


def cli_error(run: Path, tmp_path: Path, capsys, level: int = 2, *overrides: str) -> str:
    recipe(tmp_path)
    capsys.readouterr()  # drop what earlier training printed
    argv = ["train-prior", "--level", str(level), "--run", str(run), "--config", str(tmp_path / "tiny.yaml"), *overrides]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_codes_or_a_prior_of_another_vqvae_are_refused(run, tmp_path, capsys):
    train_prior(recipe(tmp_path, "prior_level2.train.steps=1"), run, level=2)
    before = (run / "prior_level2" / "last.pt").read_bytes()
    save_vqvae(run, varied_vqvae(seed=1))  # a retrained VQ-VAE: the codes are stale
    assert "were made with another VQ-VAE" in cli_error(run, tmp_path, capsys)
    encode_run(run, chunk_seconds=0.5)  # new codes: now the prior is stale
    assert "was trained on data of another VQ-VAE" in cli_error(run, tmp_path, capsys)
    assert (run / "prior_level2" / "last.pt").read_bytes() == before


def test_an_empty_codes_folder_is_refused(run, tmp_path, capsys):
    shutil.rmtree(run / "codes")
    (run / "codes").mkdir()
    assert "holds no codes; run the codes stage" in cli_error(run, tmp_path, capsys)


def test_a_checkpoint_of_another_level_is_refused(run, tmp_path, capsys):
    train_prior(recipe(tmp_path, "prior_level2.train.steps=1"), run, level=2)
    (run / "prior_level1").mkdir()
    shutil.copy(run / "prior_level2" / "last.pt", run / "prior_level1" / "last.pt")
    before = (run / "prior_level1" / "last.pt").read_bytes()
    err = cli_error(run, tmp_path, capsys, 1)
    assert "holds a level-2 prior, not a level-1 one" in err
    assert (run / "prior_level1" / "last.pt").read_bytes() == before


def test_recipe_that_disagrees_with_codes_or_checkpoint_is_refused(run, tmp_path, capsys):
    assert "n_genres=2 or more" in cli_error(run, tmp_path, capsys, 2, "prior_level2.n_genres=1")
    assert "timing range" in cli_error(run, tmp_path, capsys, 2, "prior_level2.min_duration=1.5")
    assert "follows from vqvae.downs_t" in cli_error(run, tmp_path, capsys, 2, "prior_level2.hop_length=4")
    assert "whose power is 2" in cli_error(run, tmp_path, capsys, 1, "prior_level1.cond_down_t=2")
    train_prior(recipe(tmp_path, "prior_level2.train.steps=1"), run, level=2)
    err = cli_error(run, tmp_path, capsys, 2, "prior_level2.width=64")
    assert "prior_level2.width is 64 in the recipe but 32" in err
