"""The shared training loop on a toy task: schedule, resume, no-op reruns, bad steps, failing saves."""

from __future__ import annotations

import os
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from jukebox_lite.core.checkpoint import load_checkpoint, save_checkpoint
from jukebox_lite.core.config import PlateauConfig, RecipeConfig, TrainingConfig
from jukebox_lite.algorithms.datasets import StepSampler, step_batches
from jukebox_lite.core.errors import UserError
from jukebox_lite.algorithms.training import Task, WeightEMA, final_step, learning_rate, train
from jukebox_lite.runs import StageFolder

W_TRUE = torch.tensor([1.5, -2.0, 0.5, 3.0])


class Regression(Dataset):
    """Item i: x (4,), y = x·w + noise, and i itself (so a task can tell the step)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        x = torch.from_numpy(rng.standard_normal(4).astype(np.float32))
        return x, x @ W_TRUE + 0.01 * float(rng.standard_normal()), index


class Toy(nn.Module):
    """A linear model with dropout (uses the RNG) and a running buffer updated in forward (like codebooks)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.dropout = nn.Dropout(0.02)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        if self.training:
            self.seen += x.sum()
        return self.linear(self.dropout(x))[:, 0]


class ToyTask(Task):
    kind = "toy"
    section = "toy"

    def __init__(self, cfg: TrainingConfig, nan_steps=()):
        self.cfg, self.nan_steps = cfg, set(nan_steps)

    def config_dict(self):
        return {"size": 4}

    def build_model(self):
        return Toy()

    def batches(self, rank, world_size, seed, start_step):
        return step_batches(Regression(seed), self.cfg.batch_size, rank, world_size, start_step, workers=0)

    def loss(self, model, batch):
        x, y, index = batch
        loss = ((model(x) - y) ** 2).mean()
        if int(index[0]) // self.cfg.batch_size + 1 in self.nan_steps:  # this batch is update number step
            loss = loss * float("nan")
        return loss, {"mse": loss.detach()}


def config(**changes) -> TrainingConfig:
    values = dict(batch_size=4, steps=12, lr=0.05, warmup_steps=3, weight_decay=0.0, ema=0.9, log_every=1,
                  checkpoint_every=4, media_every=0, workers=0, max_bad_steps=3)
    values.update(changes)
    return TrainingConfig(**values)


def run(tmp: Path, nan_steps=(), **changes):
    cfg = config(**changes)
    return train(ToyTask(cfg, nan_steps), cfg, StageFolder(Path(tmp)), seed=7)


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


# ----------------------------------------------------------------------------------------------
# Schedule


def test_learning_rate_warms_up_then_anneals_to_zero():
    cfg = TrainingConfig(lr=1.0, warmup_steps=4, steps=100)
    assert [learning_rate(cfg, s) for s in (1, 2, 4, 50)] == [0.25, 0.5, 1.0, 1.0]
    assert final_step(cfg) == 100
    cfg.anneal_start, cfg.anneal_steps = 10, 5
    assert [learning_rate(cfg, s) for s in (10, 12, 14, 15, 20)] == pytest.approx([1.0, 0.6, 0.2, 0.0, 0.0])
    assert final_step(cfg) == 14  # update 15 would have LR 0: the run ends before it
    cfg.steps = 12
    assert final_step(cfg) == 12
    assert learning_rate(TrainingConfig(lr=2.0, warmup_steps=0), 1) == 2.0


def test_training_config_validation():
    for bad in ({"lr": 0.0}, {"batch_size": 0}, {"anneal_start": -1}, {"ema": 1.0}, {"beta2": 1.0}, {"workers": -1}):
        with pytest.raises(UserError):
            TrainingConfig(**bad).validate("x.train")


def test_ema_decay_ramps_up_and_keeps_buffers():
    model = Toy()
    ema = WeightEMA(model, decay=0.999)
    start = model.linear.weight.detach().clone()
    with torch.no_grad():
        model.linear.weight.add_(1.0)
        model.seen.fill_(5.0)
    ema.update(model)  # first update: decay min(0.999, 2/11)
    expected = start + (1 - 2 / 11) * 1.0
    torch.testing.assert_close(ema.shadow["linear.weight"], expected)
    state = ema.state_dict(model)
    assert set(state) == set(model.state_dict()) and float(state["seen"]) == 5.0


# ----------------------------------------------------------------------------------------------
# The loop


def test_training_learns_and_writes_its_outputs(tmp_path):
    cfg = config(steps=80, lr=0.1)
    recipe = RecipeConfig(name="toy")
    result = train(ToyTask(cfg), cfg, StageFolder(tmp_path), seed=7, recipe=recipe)
    assert result.step == 80 and len(result.losses) == 80
    assert np.median(result.losses[-10:]) < 0.1 * np.median(result.losses[:5])
    state = load_checkpoint(tmp_path / "last.pt", "toy")
    error = (state["ema"]["linear.weight"][0] - W_TRUE).abs().max()
    assert error < 0.1 * W_TRUE.abs().max(), state["ema"]["linear.weight"]
    assert state["step"] == 80 and state["config"] == {"size": 4}
    assert {"model", "ema", "optimizer", "rng"} <= set(state)
    assert (tmp_path / "config.yaml").read_text().startswith("name: toy")
    logged = scalars(tmp_path, "train/mse")
    assert sorted(logged) == list(range(1, 81))
    assert scalars(tmp_path, "train/lr")[1] == pytest.approx(0.1 / 3)
    for tag in ("train/loss", "train/grad_norm", "train/samples_per_sec", "train/skipped_steps"):
        assert scalars(tmp_path, tag)


def test_resume_equals_uninterrupted_training(tmp_path):
    whole = run(tmp_path / "whole")
    first = run(tmp_path / "split", steps=6)  # stops at 6: a checkpoint not on the checkpoint_every grid
    second = run(tmp_path / "split")
    assert (first.step, second.step) == (6, 12)
    assert first.losses + second.losses == whole.losses  # bit for bit
    a, b = (load_checkpoint(tmp_path / name / "last.pt", "toy") for name in ("whole", "split"))
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg_sq"], b["optimizer"]["state"][0]["exp_avg_sq"])


class MediaTask(ToyTask):
    """Records the weights log_media sees, and draws random numbers there."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.seen = []

    def log_media(self, model, writer, step):
        self.seen.append(model.linear.weight.detach().clone())
        torch.rand(3)


def test_media_see_the_ema_weights_and_change_nothing(tmp_path):
    cfg = config(media_every=4)
    task = MediaTask(cfg)
    result = train(task, cfg, StageFolder(tmp_path / "media"), seed=7)
    assert len(task.seen) == 3
    state = load_checkpoint(tmp_path / "media" / "last.pt", "toy")
    assert torch.equal(task.seen[-1], state["ema"]["linear.weight"])  # step 12: the media and the checkpoint agree
    assert not torch.equal(task.seen[-1], state["model"]["linear.weight"])
    assert result.losses == run(tmp_path / "plain").losses  # training weights restored, RNG given back


def test_rerunning_a_finished_run_does_nothing(tmp_path, caplog):
    run(tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    with caplog.at_level("INFO"):
        again = run(tmp_path)
    assert again.step == 12 and again.losses == []
    assert "nothing to do" in caplog.text
    assert (tmp_path / "last.pt").read_bytes() == before


def test_annealing_switched_on_by_resuming(tmp_path):
    run(tmp_path, steps=6)
    later = run(tmp_path, steps=100, anneal_start=6, anneal_steps=4)
    assert later.step == 9 and len(later.losses) == 3  # update 10 would have LR 0
    lrs = scalars(tmp_path, "train/lr")
    assert [lrs[s] for s in (5, 6, 7, 8, 9)] == pytest.approx([0.05, 0.05, 0.0375, 0.025, 0.0125])
    assert run(tmp_path, steps=100, anneal_start=6, anneal_steps=4).losses == []


def test_a_non_finite_step_is_skipped_and_changes_nothing(tmp_path):
    clean = run(tmp_path / "clean", steps=3)
    skipped = run(tmp_path / "nan", nan_steps={3}, steps=3)
    assert skipped.skipped == 1 and np.isnan(skipped.losses[2]) and skipped.losses[:2] == clean.losses[:2]
    state = load_checkpoint(tmp_path / "nan" / "last.pt", "toy")
    two_steps = run(tmp_path / "two", steps=2)
    reference = load_checkpoint(tmp_path / "two" / "last.pt", "toy")
    assert state["skipped_steps"] == 1
    for name in ("linear.weight", "linear.bias", "seen"):  # parameters and the forward-updated buffer
        assert torch.equal(state["model"][name], reference["model"][name]), name
    assert two_steps.step == 2
    assert scalars(tmp_path / "nan", "train/skipped_steps")[3] == 1


def test_too_many_bad_steps_in_a_row_stop_with_the_good_checkpoint_kept(tmp_path):
    with pytest.raises(UserError, match=r"not finite for 3 steps in a row .*step 4\) is kept"):
        run(tmp_path, nan_steps={6, 7, 8, 9})
    state = load_checkpoint(tmp_path / "last.pt", "toy")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_failing_save_keeps_the_previous_checkpoint(tmp_path):
    run(tmp_path, steps=4)
    before = (tmp_path / "last.pt").read_bytes()
    # the next save's temporary lands on /dev/full, which refuses writes as a full disk does: torch's zip
    # writer then fails with a RuntimeError that names no errno (once a traceback, not a sentence)
    (tmp_path / f".last.tmp{os.getpid()}.pt").symlink_to("/dev/full")
    with pytest.raises(UserError, match=r"The disk is full: '.*last.pt' could not be written \(what was there before is intact\)"):
        run(tmp_path, steps=8)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    assert run(tmp_path, steps=8).step == 8  # and the run resumes from it


def test_a_corrupt_checkpoint_is_named_at_resume(tmp_path):
    run(tmp_path, steps=4)
    (tmp_path / "last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match=r"last\.pt' is corrupt"):
        run(tmp_path)


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    run(tmp_path, steps=4)
    cfg = config()
    task = ToyTask(cfg)
    task.kind = "prior"
    with pytest.raises(UserError, match="holds a toy model, not a prior"):
        train(task, cfg, StageFolder(tmp_path))


class FineTunableTask(ToyTask):
    """ToyTask with a size that shapes the weights and a `start` that takes an init checkpoint's weights."""

    architecture = ("size",)

    def __init__(self, cfg: TrainingConfig, size: int = 4):
        super().__init__(cfg)
        self.size, self.started_from = size, "unset"

    def config_dict(self):
        return {"size": self.size}

    def start(self, model, env, init):
        self.started_from = init
        if init is not None:
            model.load_state_dict(load_checkpoint(init, "toy")["model"])


def test_one_rule_an_import_is_fine_tuned_a_training_run_resumed(tmp_path):
    cfg = config(steps=4, lr=1e-9, warmup_steps=0)  # a tiny LR: the weights stay where they started
    imported = Toy()
    torch.nn.init.constant_(imported.linear.weight, 0.5)
    save_checkpoint(tmp_path / "last.pt", "toy", {"size": 4}, imported.state_dict(), step=0)  # no optimizer: an import
    task = FineTunableTask(cfg)
    assert train(task, cfg, StageFolder(tmp_path)).step == 4
    assert task.started_from == tmp_path / "last.pt"
    state = load_checkpoint(tmp_path / "last.pt", "toy")
    assert torch.allclose(state["model"]["linear.weight"], torch.full((1, 4), 0.5), atol=1e-6)
    again = FineTunableTask(config(steps=6, lr=1e-9, warmup_steps=0))
    assert train(again, again.cfg, StageFolder(tmp_path)).step == 6 and again.started_from == "unset"  # resumed
    other = FineTunableTask(config(steps=8), size=5)
    with pytest.raises(UserError, match=r"toy.size is 5 in the recipe but 4 in '.*last.pt'"):
        train(other, other.cfg, StageFolder(tmp_path))


def test_an_init_checkpoint_starts_a_fresh_run_only(tmp_path):
    model = Toy()
    torch.nn.init.constant_(model.linear.weight, 0.25)
    save_checkpoint(tmp_path / "init.pt", "toy", {"size": 4}, model.state_dict())
    cfg = config(steps=2)
    task = FineTunableTask(cfg)
    train(task, cfg, StageFolder(tmp_path / "out"), init=tmp_path / "init.pt")
    assert task.started_from == tmp_path / "init.pt"
    again = FineTunableTask(config(steps=4))
    train(again, again.cfg, StageFolder(tmp_path / "out"), init=tmp_path / "init.pt")
    assert again.started_from == "unset"  # the folder holds a training run: it is resumed, init ignored
    with pytest.raises(UserError, match="toy cannot start from another checkpoint"):
        train(ToyTask(cfg), cfg, StageFolder(tmp_path / "fresh"), init=tmp_path / "init.pt")


def test_a_batch_that_does_not_split_between_ranks_is_a_config_error(tmp_path, monkeypatch):
    from jukebox_lite.core import distributed

    monkeypatch.setattr(distributed, "current", lambda: distributed.DistEnv(rank=0, world_size=2))
    with pytest.raises(UserError, match=r"toy.train.batch_size is 3; it must be a multiple of the number of ranks \(2\)"):
        run(tmp_path, batch_size=3)


def test_step_sampler_splits_each_global_batch_between_ranks():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    alone = take(StepSampler(6, 0, 1, start_step=2), 12)
    rank0, rank1 = take(StepSampler(6, 0, 2, 2), 6), take(StepSampler(6, 1, 2, 2), 6)
    assert alone == list(range(12, 24))
    assert rank0[:3] + rank1[:3] + rank0[3:] + rank1[3:] == alone


# ----------------------------------------------------------------------------------------------
# Validation, best.pt, the generalisation gap, annealing on a plateau


class ValidatedTask(ToyTask):
    """ToyTask with validation windows: "valid" items come from another regression stream than "train"."""

    def eval_batches(self, split, count, batch_size):
        data = Regression(1000 if split == "valid" else 2000)
        items = [data[i] for i in range(count)]
        return [tuple(torch.utils.data.default_collate(items[i : i + batch_size])) for i in range(0, count, batch_size)]


class ScriptedTask(ValidatedTask):
    """Validation losses read from a script, one value per evaluation: (valid, train-window) pairs."""

    def __init__(self, cfg, script):
        super().__init__(cfg)
        self.script, self.calls = script, 0

    def loss(self, model, batch):
        if model.training:
            return super().loss(model, batch)
        valid, train = self.script[min(self.calls // 2, len(self.script) - 1)]
        value = valid if self.calls % 2 == 0 else train  # each evaluation measures valid, then the train windows
        self.calls += 1
        return torch.tensor(value), {}


def test_validation_logs_valid_curves_keeps_best_and_records_history(tmp_path):
    cfg = config(steps=12, lr=0.1, eval_every=4, eval_windows=8)
    task = ValidatedTask(cfg)
    train(task, cfg, StageFolder(tmp_path), seed=7)
    valid = scalars(tmp_path, "valid/loss")
    assert sorted(valid) == [4, 8, 12] and valid[12] < 0.6 * valid[4]  # it learns, and the curve shows it
    # the logged value is the EMA weights' loss on the valid windows (the training weights' is ~15 % lower)
    model = Toy().eval()
    model.load_state_dict(load_checkpoint(tmp_path / "last.pt", "toy")["ema"])
    with torch.no_grad():
        ema_loss = torch.stack([task.loss(model, batch)[0] for batch in task.eval_batches("valid", 8, 4)]).mean()
    assert valid[12] == pytest.approx(float(ema_loss), rel=1e-5)
    assert set(scalars(tmp_path, "valid/mse")) == {4, 8, 12} and set(scalars(tmp_path, "valid/gap")) == {4, 8, 12}
    history = load_checkpoint(tmp_path / "last.pt", "toy")["validation"]
    assert [step for step, _ in history["history"]] == [4, 8, 12]
    best = load_checkpoint(tmp_path / "best.pt", "toy")
    assert best["step"] == history["best_step"] and best["valid_loss"] == pytest.approx(history["best_loss"])
    assert "optimizer" not in best  # the EMA weights only: what sampling uses
    longer = config(steps=16, lr=0.1, eval_every=4, eval_windows=8)
    train(ValidatedTask(longer), longer, StageFolder(tmp_path), seed=7)  # resumed: the history goes on
    assert [s for s, _ in load_checkpoint(tmp_path / "last.pt", "toy")["validation"]["history"]] == [4, 8, 12, 16]


def test_a_plateau_starts_annealing_and_ends_the_run_across_a_resume(tmp_path):
    script = [(1.0, 0.9), (0.8, 0.7), (0.7, 0.6)] + [(0.7, 0.6)] * 20  # flat after the third evaluation
    plateau = dict(eval_every=2, eval_windows=4, anneal_steps=4, anneal_on_plateau=PlateauConfig(patience=3, min_delta=0.01))
    cfg = config(steps=13, **plateau)  # stops at 13, after the plateau rule decided at step 12
    result = train(ScriptedTask(cfg, script), cfg, StageFolder(tmp_path), seed=7)
    assert result.step == 13
    state = load_checkpoint(tmp_path / "last.pt", "toy")
    assert state["validation"]["anneal_start"] == 12  # evaluations at 8, 10, 12 brought no progress of 0.01
    longer = config(steps=100, **plateau)
    task = ScriptedTask(longer, script)
    task.calls = 2 * 6  # the evaluations already made
    assert train(task, longer, StageFolder(tmp_path), seed=7).step == 15  # annealed to zero: ends by itself
    lr = scalars(tmp_path, "train/lr")
    assert lr[12] == pytest.approx(0.05, rel=1e-6) and lr[15] == pytest.approx(0.05 / 4, rel=1e-6)
    assert max(lr.values()) == pytest.approx(0.05, rel=1e-6)
    assert train(task, longer, StageFolder(tmp_path), seed=7).step == 15  # and stays finished


def test_a_growing_gap_warns_of_overfitting(tmp_path, caplog):
    script = [(1.0, 0.9), (1.0, 0.8), (1.0, 0.7), (1.0, 0.6)]  # train windows improve, valid does not
    cfg = config(steps=8, eval_every=2, eval_windows=4, overfit_patience=3)
    with caplog.at_level(logging.WARNING):
        train(ScriptedTask(cfg, script), cfg, StageFolder(tmp_path), seed=7)
    warnings = [r.getMessage() for r in caplog.records if "over-fitting" in r.getMessage()]
    assert len(warnings) == 1 and "step 8" in warnings[0] and "best.pt (step 2)" in warnings[0]


def test_a_growing_gap_while_the_validation_loss_still_improves_is_not_overfitting(tmp_path, caplog):
    script = [(1.0, 0.9), (0.95, 0.7), (0.9, 0.5), (0.85, 0.3)]  # train windows improve faster, valid improves too
    cfg = config(steps=8, eval_every=2, eval_windows=4, overfit_patience=3)
    with caplog.at_level(logging.WARNING):
        train(ScriptedTask(cfg, script), cfg, StageFolder(tmp_path), seed=7)
    assert scalars(tmp_path, "valid/gap") == pytest.approx({2: 0.1, 4: 0.25, 6: 0.4, 8: 0.55})  # grown three times
    assert "over-fitting" not in caplog.text


def test_without_a_valid_split_it_says_so_and_validates_on_other_train_windows(tmp_path, caplog):
    class NoValidSplit(ValidatedTask):
        def eval_batches(self, split, count, batch_size):
            if split == "valid":
                raise UserError("no valid files in 'manifest.jsonl'")
            return super().eval_batches(split, count, batch_size)

    cfg = config(steps=4, eval_every=2, eval_windows=4)
    with caplog.at_level(logging.WARNING):
        train(NoValidSplit(cfg), cfg, StageFolder(tmp_path), seed=7)
    assert "no valid files in 'manifest.jsonl'; validating on train-split windows" in caplog.text
    assert set(scalars(tmp_path, "valid/loss")) == {2, 4} and (tmp_path / "best.pt").exists()
    with pytest.raises(KeyError):
        scalars(tmp_path, "valid/gap")  # no held-out data: no gap
