"""`plan`: training memory from meta-device models, checked against models built and counted for real."""

import dataclasses
import itertools

import pytest
import torch

from jukebox_lite.algorithms.memory import GB, HEADROOM, prior_memory, saved_bytes
from jukebox_lite.cli import main
from jukebox_lite.core.config import LoRAConfig, load_config
from jukebox_lite.models.prior import Prior
from tests.helpers import ROOT

DEMO = "pipelines/demo.yaml"


def real_inputs(cfg, batch: int):
    codes = torch.randint(0, cfg.bins, (batch, cfg.n_ctx))
    upper = torch.randint(0, cfg.bins, (batch, cfg.n_ctx // cfg.cond_downsample)) if cfg.is_upsampler else None
    labels = None
    if cfg.labels:
        labels = torch.zeros(batch, 4 + cfg.max_bow_genre_size, dtype=torch.long)
        labels[:, 0] = int(cfg.min_duration * cfg.sample_rate) + 1
        labels[:, 2] = cfg.n_ctx * cfg.hop_length
    return codes, upper, labels


@pytest.mark.parametrize("section", ["prior_level2", "prior_level1"])
def test_parameters_and_activations_agree_with_a_real_model(section):
    cfg = getattr(load_config(DEMO, []), section)
    planned = prior_memory(section, cfg, micro_batch=2, bf16=False)
    real = Prior(cfg)
    params = sum(p.numel() for p in real.parameters())
    assert planned.parameters == planned.trainable == params
    assert (planned.weights, planned.gradients, planned.optimizer, planned.ema) == (4 * params, 4 * params, 8 * params, 4 * params)
    torch.manual_seed(0)
    counted = saved_bytes(lambda: real(*real_inputs(cfg, 2))[1]["loss"])  # what a real float32 forward keeps
    assert planned.activations == pytest.approx(counted, rel=0.05)
    checkpointed = prior_memory(section, dataclasses.replace(cfg, checkpoint_layers=True), micro_batch=2, bf16=False)
    assert 2 * cfg.n_ctx * cfg.width * 4 * cfg.depth < checkpointed.activations < planned.activations


def allocated(forward) -> tuple[int, int]:
    """Bytes the CPU allocator holds once `forward()` has returned a loss, and the most it holds at once
    through that forward and the loss's backward, above what it held before. Read from torch.profiler's
    allocation records, which no saved-tensor hook takes part in: a hook that miscounts cannot agree with it."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.profiler.record_function("forward"):
            loss = forward()
        loss.backward()
    events = prof.profiler.kineto_results.events()
    (forward_end,) = [e.end_ns() for e in events if e.name() == "forward"]
    records = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")  # frees are negative
    held = sum(size for start, size in records if start <= forward_end)
    return held, max(itertools.accumulate(size for _, size in records))


@pytest.mark.parametrize("section", ["prior_level2", "prior_level1"])
def test_planned_activations_agree_with_what_the_cpu_allocator_measures(section):
    cfg = getattr(load_config(DEMO, []), section)
    planned = prior_memory(section, cfg, micro_batch=2, bf16=False)
    torch.manual_seed(0)
    real = Prior(cfg)
    inputs = real_inputs(cfg, 2)
    held, peak = allocated(lambda: real(*inputs)[1]["loss"])
    # the hook counts a tensor once for every op that saves it, and the float32 weights saved (no new memory): 22 % over here
    assert held <= planned.activations <= 1.25 * held
    assert peak <= planned.activations + planned.gradients  # with the gradients, the plan covers the step's real peak


def test_lora_counts_what_trains_and_a_bf16_base():
    cfg = load_config(DEMO, []).prior_level2
    lora = LoRAConfig(rank=4, train_embeddings=False)
    adapted = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lora=lora))
    planned = prior_memory("prior_level2", adapted, micro_batch=1, bf16=True)
    real = Prior(cfg)
    real.add_adapters(lora)
    trainable = sum(p.numel() for p in real.parameters() if p.requires_grad)
    frozen = [p for p in real.parameters() if not p.requires_grad]
    assert planned.trainable == trainable and planned.parameters == sum(p.numel() for p in real.parameters())
    assert planned.weights == 4 * trainable + sum(p.numel() * (2 if p.dim() >= 2 else 4) for p in frozen)
    assert planned.optimizer == 8 * trainable


def test_plan_prints_every_stage_and_what_would_fit(capsys):
    assert main(["plan", "--config", DEMO]) == 0
    out = capsys.readouterr().out
    for stage in ("vqvae", "prior_level2", "prior_level1", "prior_level0", "refiner"):
        assert any(line.startswith(stage) and line.rstrip().endswith(("yes", "yes (without activations)")) for line in out.splitlines())
    cfg = load_config(DEMO, []).prior_level2
    assert not cfg.checkpoint_layers
    batch = cfg.train.batch_size
    whole = prior_memory("prior_level2", cfg, batch, bf16=True).total
    checkpointed = prior_memory("prior_level2", dataclasses.replace(cfg, checkpoint_layers=True), batch, bf16=True).total
    memory = (whole + checkpointed) / 2 / HEADROOM / GB  # too little for the recipe, enough with checkpointing
    assert main(["plan", "--config", DEMO, "--gpu-memory", str(memory)]) == 0
    out = capsys.readouterr().out
    assert "prior_level2: fits with prior_level2.checkpoint_layers=true\n" in out
    assert main(["plan", "--config", DEMO, "--gpu-memory", "0.0001"]) == 0
    assert "prior_level2: does not fit even with layer checkpointing, micro-batches of 1 and LoRA rank 4" in capsys.readouterr().out
    assert main(["plan", "--config", DEMO, "--gpus", "3"]) == 2
    assert "is not a multiple of --gpus (3)" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["vqvae", "refiner"])
def test_audio_models_activations_extrapolate_to_what_a_real_window_saves(stage):
    from jukebox_lite.algorithms.memory import audio_model_memory
    from jukebox_lite.models.refiner import Refiner
    from jukebox_lite.models.vqvae import VQVAE
    from jukebox_lite.stages.plan import refiner_forward, vqvae_forward

    recipe = load_config(DEMO, [])
    if stage == "vqvae":
        cfg, model, forward, stride, length = recipe.vqvae, VQVAE(recipe.vqvae), vqvae_forward, recipe.vqvae.hop_lengths[-1], recipe.vqvae.sample_length
    else:
        cfg = dataclasses.replace(recipe.refiner, residual_scale=1.0)
        model, forward, stride, length = Refiner(cfg), refiner_forward, cfg.stride, cfg.segment_length
    planned = audio_model_memory(stage, model, forward, stride, 4 * length, batch=3, ema=True)
    torch.manual_seed(0)
    counted = saved_bytes(lambda: forward(model, 4 * length))  # one item of the longer window, for real
    assert planned.activations == pytest.approx(3 * counted, rel=0.05)
    assert planned.parameters == sum(p.numel() for p in model.parameters())


def test_fsdp_splits_what_a_prior_keeps_over_the_gpus():
    cfg = load_config(DEMO, []).prior_level2
    sharded = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, sharding="fsdp", media_every=0))
    whole = prior_memory("prior_level2", cfg, 1, bf16=True, gpus=4)
    split = prior_memory("prior_level2", sharded, 1, bf16=True, gpus=4)
    layer = sum(p.numel() for p in Prior(cfg).prior.transformer._attn_mods[0].parameters())
    assert (split.gradients, split.optimizer, split.ema) == (whole.gradients // 4, whole.optimizer // 4, whole.ema // 4)
    assert split.weights == whole.weights // 4 + 2 * layer * 2 and split.activations == whole.activations


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "pipelines").glob("*.yaml")))
def test_plan_prints_a_row_for_every_stage_of_every_recipe(recipe, capsys):
    assert main(["plan", "--config", str(ROOT / "pipelines" / recipe)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:1].isalpha()]
    assert ["vqvae", "prior_level2", "prior_level1", "prior_level0", "refiner"] == [r for r in rows if r in
                                                                                   ("vqvae", "prior_level2", "prior_level1", "prior_level0", "refiner")]
