"""The diffusion refiner: v-objective and residual-target maths, the U-Net, training on pairs, the chunked DDIM
sampler, checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from jukebox_lite.core.checkpoint import save_checkpoint
from jukebox_lite.core.config import RefinerConfig, load_config
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.refiner import RefinerUNet, alpha_sigma, diffusion_target, noised, v_target, waveform_from_target, x0_from_v
from jukebox_lite.nn.unet import local_attention
from jukebox_lite.models.checkpoints import load_refiner, load_vqvae, save_refiner
from jukebox_lite.algorithms.refining import chunk_plan, make_training_pair, refine
from tests.helpers import synth_music
from tests.helpers import TINY_SR, refiner_loss, tiny_refiner_config, tiny_refiner_vqvae


def music(seconds: float, seed: int) -> torch.Tensor:
    """(1, 1, T) synthesized mono music."""
    return torch.from_numpy(synth_music(seconds, TINY_SR, seed=seed, channels=1))[None]


def degrade(clean: torch.Tensor, seed: int) -> torch.Tensor:
    """A stand-in for VQ-VAE damage: everything above 1 kHz removed, a little noise added."""
    spectrum = torch.fft.rfft(clean)
    spectrum[..., int(1000 / TINY_SR * clean.shape[-1]) :] = 0
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    return torch.fft.irfft(spectrum, n=clean.shape[-1]) + 0.01 * noise


def pair_batch(step: int, batch: int = 4, length: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops of a few seconds of synthesized music and their degraded versions."""
    gen = torch.Generator().manual_seed(step)
    tracks = torch.cat([music(2.0, seed) for seed in range(3)])  # (3, 1, 2 s)
    rows = torch.randint(0, 3, (batch,), generator=gen)
    starts = torch.randint(0, tracks.shape[-1] - length, (batch,), generator=gen)
    clean = torch.stack([tracks[r, :, s : s + length] for r, s in zip(rows.tolist(), starts.tolist())])
    return clean, degrade(clean, seed=step)


def train(model: RefinerUNet, steps: int = 100) -> list[float]:
    """A short plain Adam loop on synthesized pairs; returns the losses."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        clean, coarse = pair_batch(step)
        loss = refiner_loss(model, clean, coarse, generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained():
    """A tiny refiner after a short training run, with its losses (shared: training is the slow part)."""
    torch.manual_seed(0)
    model = RefinerUNet(tiny_refiner_config())
    losses = train(model)
    return model.eval(), losses


def restore(coarse: torch.Tensor) -> torch.Tensor:
    """The clean audio the oracle knows for a condition: pointwise, so it is the same however the track is cut."""
    return 0.8 * coarse


class OracleRefiner(nn.Module):
    """Stands in for a perfect network: the clean audio is `restore(condition)`, and v is computed exactly from it.

    With it the sampler must return the clean audio at any step count, strength and chunking, so any
    error in the DDIM update, the residual scaling, the chunk blending or the padding shows.
    """

    def __init__(self, cfg: RefinerConfig):
        super().__init__()
        self.config = cfg
        self.device = torch.device("cpu")
        self.receptive_field = RefinerUNet(cfg).receptive_field  # the chunking the real network would get
        self.longest_input = 0

    def forward(self, x_t, t, coarse):
        assert x_t.shape[-1] % self.config.stride == 0
        self.longest_input = max(self.longest_input, x_t.shape[-1])
        alpha, sigma = alpha_sigma(t.float())
        x0 = diffusion_target(self.config, restore(coarse), coarse)
        return (alpha * x_t - x0) / sigma, {}  # x0 = α·x_t − σ·v  ⇒  v = (α·x_t − x0) / σ; no metrics


# ----------------------------------------------------------------------------------------------
# The v-objective


def test_schedule_endpoints_and_unit_power():
    alpha, sigma = alpha_sigma(torch.tensor([0.0, 1.0]))
    assert alpha[0] == 1 and sigma[0] == 0
    assert abs(alpha[1]) < 1e-6 and sigma[1] == pytest.approx(1.0)
    t = torch.rand(100, generator=torch.Generator().manual_seed(0))
    alpha, sigma = alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(100))
    assert (alpha[1:] - alpha[:-1]).sign().eq(-(t[1:] - t[:-1]).sign()).all()  # α falls as t rises


def test_v_target_and_x0_recovery():
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 1, 50, generator=gen), torch.randn(3, 1, 50, generator=gen)
    t = torch.tensor([0.0, 1 / 3, 0.9])
    v = v_target(x0, noise, t)
    # t = 1/3: α = cos(π/6) = √3/2, σ = sin(π/6) = 1/2
    torch.testing.assert_close(v[1], math.sqrt(3) / 2 * noise[1] - 0.5 * x0[1])
    torch.testing.assert_close(v[0], noise[0])  # t = 0: v is the noise
    x_t = noised(x0, noise, t)
    torch.testing.assert_close(x_t[1], math.sqrt(3) / 2 * x0[1] + 0.5 * noise[1])
    torch.testing.assert_close(x0_from_v(x_t, v, t), x0, atol=1e-5, rtol=1e-5)


def test_residual_target_is_the_scaled_error_of_the_coarse_audio():
    clean = music(0.1, seed=1)
    coarse = degrade(clean, seed=2)
    cfg = tiny_refiner_config(residual_scale=0.05)
    assert cfg.target == "residual"  # the default
    x0 = diffusion_target(cfg, clean, coarse)
    torch.testing.assert_close(x0, (clean - coarse) / 0.05)
    torch.testing.assert_close(waveform_from_target(cfg, x0, coarse), clean)
    assert torch.equal(diffusion_target(cfg, coarse, coarse), torch.zeros_like(coarse))  # where strength < 1 starts
    waveform = tiny_refiner_config(target="waveform")
    assert diffusion_target(waveform, clean, coarse) is clean and waveform_from_target(waveform, clean, coarse) is clean
    # v and x0 recovery are the same maths on the residual
    noise, t = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3)), torch.tensor([0.4])
    v = v_target(x0, noise, t)
    torch.testing.assert_close(x0_from_v(noised(x0, noise, t), v, t), x0, atol=1e-4, rtol=1e-5)
    with pytest.raises(UserError, match="refiner.target"):
        tiny_refiner_config(target="spectrum").validate()
    with pytest.raises(UserError, match="refiner.residual_scale"):
        tiny_refiner_config(residual_scale=0.0).validate()


# ----------------------------------------------------------------------------------------------
# The network


def test_unet_shape_stride_and_config_checks():
    cfg = tiny_refiner_config()
    model = RefinerUNet(cfg)
    assert cfg.stride == 16
    x = torch.randn(2, 1, 160)
    assert model(x, torch.tensor([0.1, 0.7]), x)[0].shape == (2, 1, 160)
    with pytest.raises(ValueError, match="multiple of the refiner's stride 16"):
        model(torch.randn(1, 1, 150), torch.tensor([0.5]), torch.randn(1, 1, 150))
    with pytest.raises(UserError, match="refiner.segment_length"):
        tiny_refiner_config(segment_length=2040).validate()
    with pytest.raises(UserError, match="refiner.factors"):
        tiny_refiner_config(factors=[4, 3]).validate()
    with pytest.raises(UserError, match="refiner.channels"):
        tiny_refiner_config(channels=[8, 16, 31]).validate()
    with pytest.raises(UserError, match="refiner.strength"):
        tiny_refiner_config(strength=1.5).validate()
    with pytest.raises(UserError, match=r"refiner.chunk_length is 1024; each chunk discards one receptive field \(\d+ samples\)"):
        RefinerUNet(tiny_refiner_config(chunk_length=1024))
    cfg = load_config(None, ["refiner.channels=[8,16,32]", "refiner.factors=[4,4]", "refiner.attention_window=4",
                             "refiner.attention_heads=2", "refiner.segment_length=4096", "refiner.overlap_length=512"])
    assert cfg.refiner.stride == 16 and cfg.refiner.overlap_length == 512


def test_attention_only_at_coarse_levels_and_timestep_reaches_every_block():
    model = RefinerUNet(tiny_refiner_config(channels=[8, 16, 32, 32], factors=[2, 2, 2], attention_levels=2))
    attended = [any(not isinstance(a, nn.Identity) for a in level.attention) for level in model.down]
    assert attended == [False, False, True, True]
    x = torch.randn(1, 1, 64)
    for p in model.parameters():  # undo the zero initialisation so the output depends on everything
        if (p == 0).all():
            nn.init.normal_(p, std=0.1)
    out_a, out_b = model(x, torch.tensor([0.2]), x)[0], model(x, torch.tensor([0.8]), x)[0]
    assert not torch.allclose(out_a, out_b)
    out_a.sum().backward()
    blocks = [m for m in model.modules() if m.__class__.__name__ == "ResBlock"]
    assert blocks and all(b.emb.weight.grad is not None and b.emb.weight.grad.abs().sum() > 0 for b in blocks)


# ----------------------------------------------------------------------------------------------
# Training


def held_out_loss(model: RefinerUNet) -> float:
    """The v-loss on 4 fixed batches of unseen crops, with fixed t and noise: comparable between models."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(refiner_loss(model.eval(), *pair_batch(1000 + i, batch=8), generator=gen).item() for i in range(4)) / 4


def test_loss_falls_in_a_short_adam_loop(trained):
    """v̂ starts at 0, so the loss starts near E[v²] = E[α²] + E[σ²]·E[x0²]. The residual has unit variance
    (≈ 1) and is mostly treble the low-passed condition cannot predict plus noise, so it falls less far
    than the waveform target's (≈ 0.5 + a little), most of which the condition gives away. Measured on
    held-out crops with fixed t and noise, as the training losses of single batches are too noisy."""
    model, losses = trained
    torch.manual_seed(0)
    untrained = held_out_loss(RefinerUNet(tiny_refiner_config()))
    assert 0.8 < untrained < 1.3 and held_out_loss(model) < 0.85 * untrained, (untrained, held_out_loss(model))
    assert all(math.isfinite(loss) for loss in losses)
    torch.manual_seed(0)
    waveform = RefinerUNet(tiny_refiner_config(target="waveform"))
    untrained = held_out_loss(waveform)
    train(waveform)
    assert 0.3 < untrained < 1.0 and held_out_loss(waveform) < 0.3 * untrained, (untrained, held_out_loss(waveform))


def test_training_pairs_through_a_tiny_vqvae():
    vqvae = tiny_refiner_vqvae()
    before = {k: v.clone() for k, v in vqvae.state_dict().items()}
    clean = music(1.0, seed=4)[:, :, :4096].repeat(2, 1, 1)
    coarse, target = make_training_pair(vqvae, clean, cond_level=1)
    assert target is clean and coarse.shape == clean.shape and not coarse.requires_grad
    torch.testing.assert_close(coarse, vqvae.decode(vqvae.encode(clean), level=1))
    assert not torch.allclose(coarse, clean, atol=1e-3)  # the VQ-VAE's damage is what the refiner learns to undo
    model = RefinerUNet(tiny_refiner_config())
    loss = refiner_loss(model, target, coarse, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in vqvae.parameters())
    assert all(torch.equal(before[k], v) for k, v in vqvae.state_dict().items())  # codebooks untouched
    with pytest.raises(UserError, match="cond_level is 3"):
        make_training_pair(vqvae, clean, cond_level=3)


# ----------------------------------------------------------------------------------------------
# Sampling


def test_sampler_is_deterministic_per_seed(trained):
    model, _ = trained
    coarse = degrade(music(0.5, seed=7), seed=1)
    a, b = refine(model, coarse, seed=3), refine(model, coarse, seed=3)
    assert torch.equal(a, b)
    assert not torch.allclose(a, refine(model, coarse, seed=4), atol=1e-4)
    assert a.shape == coarse.shape and torch.isfinite(a).all() and a.abs().max() <= 1


def test_strength_zero_returns_the_input_and_small_strength_stays_close(trained):
    model, _ = trained
    coarse = degrade(music(0.5, seed=7), seed=1)
    assert torch.equal(refine(model, coarse, strength=0.0), coarse)
    assert torch.equal(refine(model, coarse, strength=0.0, steps=3, seed=9), coarse)
    near = refine(model, coarse, strength=0.05, steps=2)
    far = refine(model, coarse, strength=1.0, steps=2)
    assert (near - coarse).abs().mean() < 0.5 * (far - coarse).abs().mean()


@pytest.mark.parametrize("target", ["residual", "waveform"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("length", [1001, 2048, 4096 + 37, 9000])
def test_sampler_with_a_perfect_network_recovers_the_target_at_any_length(target, strength, length):
    """DDIM with the exact v returns x0 and so the clean audio; chunked, padded and odd lengths included, seams and all."""
    cfg = tiny_refiner_config(chunk_length=2048, overlap_length=128, target=target)
    oracle = OracleRefiner(cfg)
    coarse = music(1.2, seed=2)[:, :, :length].repeat(2, 1, 1)  # batch of two
    out = refine(oracle, coarse, steps=3, strength=strength, seed=5)
    assert out.shape == coarse.shape
    torch.testing.assert_close(out, restore(coarse), atol=2e-5, rtol=0)


def test_model_memory_is_bounded_by_the_chunk_not_the_track():
    cfg = tiny_refiner_config(chunk_length=2048, overlap_length=128)
    oracle = OracleRefiner(cfg)
    refine(oracle, torch.zeros(1, 1, 60 * TINY_SR), steps=1)  # a minute of audio
    assert oracle.longest_input == 2048


def test_chunk_plan_aligns_starts_drops_margins_and_crossfades():
    assert chunk_plan(1008, 1024, 128, 300, 16)[0] == [0]
    starts, weights = chunk_plan(4000, 1024, 128, 300, 16)
    assert starts[:3] == [0, 288, 576] and starts[-1] == 4000 - 1024  # hop (1024 − 600 − 128) // 16 · 16
    assert all(s % 16 == 0 for s in starts)
    assert weights[0][:596].eq(1).all() and weights[0][-300:].eq(0).all()  # first chunk: the track's start is real
    assert weights[1][:300].eq(0).all() and weights[1][-300:].eq(0).all()
    assert weights[-1][:300].eq(0).all() and weights[-1][-300:].eq(1).all()  # last chunk: flush with the end
    total = torch.zeros(4000)
    for start, w in zip(starts, weights):
        total[start : start + 1024] += w
    assert total.min() > 0.99 and total.max() < 2.01  # every sample covered, ramps sum to ~1 where regular
    with pytest.raises(ValueError, match="exceed 2 × the U-Net's receptive field"):
        chunk_plan(4000, 1024, 128, 450, 16)


def test_local_attention_equals_a_banded_dense_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 8) for _ in range(3))
    for window in (1, 4, 16, 40):
        distance = (torch.arange(37)[:, None] - torch.arange(37)[None, :]).abs()
        dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=distance <= window)
        torch.testing.assert_close(local_attention(q, k, v, window), dense, atol=1e-5, rtol=1e-5)


def randomised(model: RefinerUNet, seed: int = 0) -> RefinerUNet:
    """A copy whose zero-initialised layers are random too, so every path carries signal."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    for p in model.parameters():
        if (p == 0).all():
            nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.mark.parametrize("changes", [{}, dict(channels=[8, 16, 16, 32], factors=[2, 4, 2], res_blocks=2, attention_levels=2, chunk_length=4096)])
def test_receptive_field_bounds_how_far_a_change_travels(changes):
    """Change the input at one sample: the output moves within the receptive field and nowhere else,
    and the bound is not loose (the change reaches well over half of it)."""
    cfg = tiny_refiner_config(**changes)
    model = randomised(RefinerUNet(cfg))
    length, at = 8192, 4000
    x, coarse = torch.randn(1, 1, length), torch.randn(1, 1, length)
    bumped = x.clone()
    bumped[..., at] += 1.0
    with torch.no_grad():
        moved = (model(bumped, torch.tensor([0.5]), coarse)[0] - model(x, torch.tensor([0.5]), coarse)[0]).abs()[0, 0]
    reach = moved.nonzero().flatten()
    field = model.receptive_field
    assert at - field <= reach.min() and reach.max() <= at + field, (reach.min(), reach.max(), field)
    assert reach.max() - at > 0.5 * field, (reach.max() - at, field)


@pytest.mark.parametrize("length", [12000, 12007])
def test_chunked_equals_unchunked_everywhere_and_seams_are_continuous(trained, length):
    """The U-Net is local and each chunk discards one receptive field at its inner edges, so refining
    in chunks gives the whole-track result at every sample, seams included, up to float rounding
    (and the randomised network, where every layer carries signal, too)."""
    for model in (trained[0], randomised(trained[0])):
        coarse = degrade(music(1.6, seed=9), seed=3)[..., :length]
        whole = refine(model, coarse, seed=1, chunk_length=12288)
        chunked = refine(model, coarse, seed=1)  # 2048-sample chunks
        starts, _ = chunk_plan(-(-length // 16) * 16, 2048, 256, model.receptive_field, 16)
        assert len(starts) > 5
        torch.testing.assert_close(chunked, whole, atol=2e-5, rtol=0)
        other = refine(model, coarse, seed=1, chunk_length=3072, overlap_length=512)  # cut elsewhere
        torch.testing.assert_close(other, whole, atol=2e-5, rtol=0)
        assert not torch.allclose(refine(model, coarse, seed=2), whole, atol=1e-3)  # the seed matters


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_load_refiner_prefers_ema_and_checks_the_vqvae(tmp_path):
    vqvae = tiny_refiner_vqvae(seed=0)
    fingerprint = vqvae.fingerprint()
    save_checkpoint(tmp_path / "vqvae" / "last.pt", "vqvae", dataclasses.asdict(vqvae.config), vqvae.state_dict())
    assert load_vqvae(tmp_path / "vqvae").fingerprint() == fingerprint
    assert tiny_refiner_vqvae(seed=1).fingerprint() != fingerprint

    torch.manual_seed(0)
    model = RefinerUNet(tiny_refiner_config(), vqvae_fingerprint=fingerprint)
    ema = {k: v + 0.01 for k, v in model.state_dict().items()}
    save_refiner(tmp_path / "refiner" / "last.pt", model, ema=ema, step=7)
    loaded = load_refiner(tmp_path / "refiner", vqvae=fingerprint)
    assert not loaded.training and loaded.config == model.config and loaded.vqvae_fingerprint == fingerprint
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ema.items())
    with pytest.raises(UserError, match="another VQ-VAE"):
        load_refiner(tmp_path / "refiner", vqvae=tiny_refiner_vqvae(seed=1).fingerprint())
    with pytest.raises(UserError, match="does not exist"):
        load_refiner(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="vqvae_fingerprint"):
        save_refiner(tmp_path / "bad.pt", RefinerUNet(tiny_refiner_config()))


def test_a_groupnorm_checkpoint_from_before_chunk_exact_refinement_is_refused(tmp_path):
    model = RefinerUNet(tiny_refiner_config(), vqvae_fingerprint="abc")
    config = {**dataclasses.asdict(model.config), "norm_groups": 4}
    del config["attention_window"], config["chunk_length"]
    save_checkpoint(tmp_path / "old.pt", "refiner", config, model.state_dict(), vqvae_fingerprint="abc")
    with pytest.raises(UserError, match="older GroupNorm U-Net.*retrain it with train-refiner"):
        load_refiner(tmp_path / "old.pt")
