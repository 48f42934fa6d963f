"""The refiner: the loudness scale, the v-objective, the U-Nets, the matched filter, training on pairs,
the chunked sampler, checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jukebox_lite.algorithms import metrics
from jukebox_lite.core.checkpoint import save_checkpoint
from jukebox_lite.core.config import RefinerConfig, load_config
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.refiner import (
    ENVELOPE_FLOOR, EQUALIZER_TAPS, Refiner, alpha_sigma, audio_from_residual, envelope, noised, residual_target,
    v_target, x0_from_v,
)
from jukebox_lite.nn.unet import local_attention
from jukebox_lite.models.checkpoints import load_refiner, load_vqvae, save_refiner
from jukebox_lite.algorithms.refining import chunk_plan, make_training_pair, matched_filter, refine
from tests.helpers import synth_music
from tests.helpers import TINY_SR, refiner_loss, tiny_refiner_config, tiny_refiner_vqvae

HISS = 0.001  # −60 dBFS of white noise in `degrade`


def music(seconds: float, seed: int) -> torch.Tensor:
    """(1, 1, T) synthesized mono music."""
    return torch.from_numpy(synth_music(seconds, TINY_SR, seed=seed, channels=1))[None]


def degrade(clean: torch.Tensor, seed: int) -> torch.Tensor:
    """A known stand-in for VQ-VAE damage: the treble above 2 kHz 12 dB down, the level 2 dB down, hiss added."""
    spectrum = torch.fft.rfft(clean)
    spectrum[..., int(2000 / TINY_SR * clean.shape[-1]) :] *= 0.25
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    return 0.8 * torch.fft.irfft(spectrum, n=clean.shape[-1]) + HISS * noise


TRACKS = torch.cat([music(2.0, seed) for seed in range(3)])  # (3, 1, 2 s): what training crops come from


def pair_batch(step: int, batch: int = 4, length: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops of a few seconds of synthesized music and their degraded versions."""
    gen = torch.Generator().manual_seed(step)
    rows = torch.randint(0, 3, (batch,), generator=gen)
    starts = torch.randint(0, TRACKS.shape[-1] - length, (batch,), generator=gen)
    clean = torch.stack([TRACKS[r, :, s : s + length] for r, s in zip(rows.tolist(), starts.tolist())])
    return clean, degrade(clean, seed=step)


def fresh_refiner(**changes) -> Refiner:
    """A new tiny refiner whose equalizer starts as the matched filter of the training tracks, as train-refiner starts it."""
    torch.manual_seed(0)
    model = Refiner(tiny_refiner_config(**changes))
    model.equalizer.weight.data.copy_(matched_filter(degrade(TRACKS, seed=99), TRACKS, EQUALIZER_TAPS))
    return model


def train(model: Refiner, steps: int) -> list[float]:
    """A plain Adam loop on synthesized pairs; returns the losses."""
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


TRAINING_STEPS = 300


@pytest.fixture(scope="module")
def trained():
    """A tiny refiner after a short training run, with its losses (shared: training is the slow part)."""
    model = fresh_refiner()
    losses = train(model, TRAINING_STEPS)
    return model.eval(), losses


def restore(coarse: torch.Tensor) -> torch.Tensor:
    """The clean audio the oracle knows for a condition: pointwise, so it is the same however the track is cut."""
    return 0.8 * coarse


class OracleRefiner(nn.Module):
    """Stands in for perfect networks: the clean audio is `restore(coarse)`, so on the loudness-free scale
    the residual is r = −0.2·c / residual_scale; the estimator returns half of it and the detail model
    the exact v of the other half.

    With it the sampler must return the clean audio at any step count, strength and chunking (the
    estimate alone at strength 0), so any error in the DDIM update, the scaling, the chunk blending or
    the padding shows.
    """

    def __init__(self, cfg: RefinerConfig):
        super().__init__()
        self.config = cfg
        self.device = torch.device("cpu")
        self.receptive_field = Refiner(cfg).receptive_field  # the chunking the real networks would get
        self.detail = True
        self.longest_input = 0

    def residual(self, cond: torch.Tensor) -> torch.Tensor:
        return -0.2 * cond / self.config.residual_scale

    def estimate(self, coarse, gain):
        assert coarse.shape[-1] % self.config.stride == 0
        self.longest_input = max(self.longest_input, coarse.shape[-1])
        return 0.5 * self.residual(coarse * gain)

    def velocity(self, x_t, t, cond, estimate):
        alpha, sigma = alpha_sigma(t.float())
        x0 = self.residual(cond) - estimate
        return (alpha * x_t - x0) / sigma  # x0 = α·x_t − σ·v  ⇒  v = (α·x_t − x0) / σ


# ----------------------------------------------------------------------------------------------
# The loudness scale and the v-objective


def test_envelope_follows_the_local_level_and_the_residual_round_trips():
    t = torch.arange(8000) / TINY_SR
    loud_then_quiet = torch.sin(2 * math.pi * 440 * t) * torch.where(t < 0.25, 0.5, 0.005)  # 40 dB apart
    env = envelope(loud_then_quiet[None, None], 256)[0, 0]
    torch.testing.assert_close(env[1000:3000], torch.full((2000,), 0.5 / math.sqrt(2) + ENVELOPE_FLOOR), rtol=0.02, atol=0)
    torch.testing.assert_close(env[5000:7000], torch.full((2000,), 0.005 / math.sqrt(2) + ENVELOPE_FLOOR), rtol=0.02, atol=0)
    assert env.min() >= ENVELOPE_FLOOR and torch.equal(envelope(torch.zeros(1, 1, 64), 16), torch.full((1, 1, 64), ENVELOPE_FLOOR))
    # local: the envelope of a stretch equals the whole track's wherever the stretch reaches window // 2 beyond
    whole = envelope(loud_then_quiet[None, None], 256)
    torch.testing.assert_close(envelope(loud_then_quiet[None, None, 2000:6000], 256)[..., 128:-128], whole[..., 2128:5872])
    clean = music(0.1, seed=1)
    coarse = degrade(clean, seed=2)
    cfg = tiny_refiner_config(residual_scale=0.05)
    env = envelope(coarse, cfg.envelope_window)
    r = residual_target(cfg, clean, coarse, env)
    torch.testing.assert_close(r, (clean - coarse) / (env * 0.05))
    torch.testing.assert_close(audio_from_residual(cfg, r, coarse, env), clean, atol=1e-6, rtol=0)
    assert torch.equal(residual_target(cfg, coarse, coarse, env), torch.zeros_like(coarse))
    with pytest.raises(UserError, match="refiner.residual_scale"):
        tiny_refiner_config(residual_scale=0.0).validate()
    with pytest.raises(UserError, match="refiner.envelope_window"):
        tiny_refiner_config(envelope_window=0).validate()


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


# ----------------------------------------------------------------------------------------------
# The matched filter


def test_matched_filter_inverts_a_known_filter_and_ignores_what_is_not_signal():
    """coarse = a known FIR of the clean audio: the filter found undoes it (the corrected audio is near the
    clean), and on uncorrelated noise added to the coarse audio its gain falls below 1 (Wiener)."""
    clean = torch.randn(4, 1, 16000, generator=torch.Generator().manual_seed(0))
    fir = torch.tensor([0.2, 0.6, 0.2])[None, None]  # a low-pass whose gain never falls below 0.2: invertible
    coarse = F.conv1d(clean, fir, padding=1)
    weights = matched_filter(coarse, clean, 63)
    assert weights.shape == (1, 1, 63)
    corrected = coarse + F.conv1d(coarse, weights, padding=31)
    before, after = (float((x - clean)[..., 100:-100].pow(2).mean()) for x in (coarse, corrected))
    assert after < 0.1 * before, (before, after)
    # a pure delay of one sample: the filter's correction is that shift (Conv1d correlates: check the layout)
    delayed = F.pad(clean, (1, 0))[..., :-1]
    shift = matched_filter(delayed, clean, 15)
    corrected = delayed + F.conv1d(delayed, shift, padding=7)
    assert float((corrected - clean)[..., 50:-50].pow(2).mean()) < 0.05 * float((delayed - clean).pow(2).mean())
    # noise the clean audio does not have: the gain at every frequency drops below 1
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))  # SNR 0 dB
    impulse = matched_filter(noisy, clean, 255)[0, 0].flip(0)  # index 127 + m holds lag m
    impulse[127] += 1  # the coarse audio itself, which the correction is added to
    gain = torch.fft.rfft(impulse, 1024).abs()
    assert 0.3 < gain.min() and gain.max() < 0.7  # the Wiener gain of 0 dB SNR is 1/2


# ----------------------------------------------------------------------------------------------
# The networks


def test_shapes_stride_and_config_checks():
    cfg = tiny_refiner_config()
    model = Refiner(cfg)
    assert cfg.stride == 16
    x = torch.randn(2, 1, 160)
    audio, parts = model(x, x + 0.01, torch.tensor([0.1, 0.7]), torch.randn_like(x))
    assert audio.shape == (2, 1, 160) and parts["loss_per_item"].shape == (2,) and parts["detail_loss"].shape == (2,)
    torch.testing.assert_close(parts["loss_per_item"], parts["estimate_loss"] + parts["detail_loss"])
    assert torch.equal(audio, x)  # an untrained refiner (zero output layers, zero equalizer) returns its input
    assert "detail_loss" not in Refiner(tiny_refiner_config(detail=False))(x, x, torch.rand(2), x)[1]
    assert Refiner(tiny_refiner_config(detail=False)).detail is None
    with pytest.raises(ValueError, match="multiple of the refiner's stride 16"):
        model(torch.randn(1, 1, 150))
    with pytest.raises(UserError, match="refiner.segment_length"):
        tiny_refiner_config(segment_length=2040).validate()
    with pytest.raises(UserError, match="refiner.factors"):
        tiny_refiner_config(factors=[4, 3]).validate()
    with pytest.raises(UserError, match="refiner.channels"):
        tiny_refiner_config(channels=[8, 16, 31]).validate()
    with pytest.raises(UserError, match="refiner.strength"):
        tiny_refiner_config(strength=1.5).validate()
    with pytest.raises(UserError, match=r"refiner.chunk_length is 1024; each chunk discards one receptive field \(\d+ samples\)"):
        Refiner(tiny_refiner_config(chunk_length=1024))
    cfg = load_config(None, ["refiner.channels=[8,16,32]", "refiner.factors=[4,4]", "refiner.attention_window=4",
                             "refiner.attention_heads=2", "refiner.segment_length=4096", "refiner.overlap_length=512"])
    assert cfg.refiner.stride == 16 and cfg.refiner.overlap_length == 512


def test_attention_only_at_coarse_levels_and_timestep_reaches_every_block():
    model = Refiner(tiny_refiner_config(channels=[8, 16, 32, 32], factors=[2, 2, 2], attention_levels=2))
    attended = [any(not isinstance(a, nn.Identity) for a in level.attention) for level in model.detail.down]
    assert attended == [False, False, True, True]
    x = torch.randn(1, 1, 64)
    for p in model.parameters():  # undo the zero initialisation so the output depends on everything
        if (p == 0).all():
            nn.init.normal_(p, std=0.1)
    out_a, out_b = model.velocity(x, torch.tensor([0.2]), x, x), model.velocity(x, torch.tensor([0.8]), x, x)
    assert not torch.allclose(out_a, out_b)
    out_a.sum().backward()
    blocks = [m for m in model.detail.modules() if m.__class__.__name__ == "ResBlock"]
    assert blocks and all(b.emb.weight.grad is not None and b.emb.weight.grad.abs().sum() > 0 for b in blocks)
    assert not hasattr(model.estimator, "time_embedding")  # the estimator does not depend on t


# ----------------------------------------------------------------------------------------------
# Training


def held_out_loss(model: Refiner) -> float:
    """The loss on 4 fixed batches of unseen crops, with fixed t and noise: comparable between models."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(refiner_loss(model.eval(), *pair_batch(1000 + i, batch=8), generator=gen).item() for i in range(4)) / 4


def test_loss_falls_in_a_short_adam_loop(trained):
    """Measured on held-out crops with fixed t and noise, as the training losses of single batches are too noisy."""
    model, losses = trained
    untrained = held_out_loss(fresh_refiner())
    assert held_out_loss(model) < 0.8 * untrained, (untrained, held_out_loss(model))
    assert all(math.isfinite(loss) for loss in losses)


def five_metrics(clean: torch.Tensor, estimate: torch.Tensor) -> dict[str, float]:
    values = metrics.audio_metrics(clean, estimate, TINY_SR)
    return {name: float(values[name].mean()) for name in
            ("mr_stft_distance", "log_mel_distance", "high_band_abs_error_db", "spectral_convergence_db", "si_sdr_db")}


def test_trained_estimator_undoes_a_known_degradation_on_all_five_metrics(trained):
    """Unseen music, degraded as in training (treble −12 dB, level −2 dB, hiss): the estimate is closer to
    the original than the degraded audio on every metric eval-refiner reports. The matched filter the
    equalizer starts from is not enough alone (its treble lift raises the hiss in quiet bands, so log-mel
    gets worse): the training is what wins there."""
    model, _ = trained
    clean = music(2.0, seed=7)
    coarse = degrade(clean, seed=1234)
    before = five_metrics(clean, coarse)
    after = five_metrics(clean, refine(model, coarse, strength=0.0))
    for name in before:
        better = after[name] > before[name] if name == "si_sdr_db" else after[name] < before[name]
        assert better, (name, before[name], after[name])
    filter_only = five_metrics(clean, refine(fresh_refiner(), coarse, strength=0.0))
    assert filter_only["log_mel_distance"] > before["log_mel_distance"]
    assert filter_only["si_sdr_db"] > before["si_sdr_db"] + 3  # the filter itself undoes most of the tilt


def test_training_pairs_through_a_tiny_vqvae():
    vqvae = tiny_refiner_vqvae()
    before = {k: v.clone() for k, v in vqvae.state_dict().items()}
    clean = music(1.0, seed=4)[:, :, :4096].repeat(2, 1, 1)
    coarse, target = make_training_pair(vqvae, clean, cond_level=1)
    assert target is clean and coarse.shape == clean.shape and not coarse.requires_grad
    torch.testing.assert_close(coarse, vqvae.decode(vqvae.encode(clean), level=1))
    assert not torch.allclose(coarse, clean, atol=1e-3)  # the VQ-VAE's damage is what the refiner learns to undo
    model = Refiner(tiny_refiner_config())
    loss = refiner_loss(model, target, coarse, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.estimator.out.weight.grad.abs().sum() > 0 and model.detail.out.weight.grad.abs().sum() > 0
    assert model.equalizer.weight.grad.abs().sum() > 0
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


def test_strength_zero_is_the_estimate_alone_and_small_strength_stays_close_to_it(trained):
    model, _ = trained
    coarse = degrade(music(0.5, seed=7), seed=1)
    estimate = refine(model, coarse, strength=0.0)
    with torch.no_grad():
        torch.testing.assert_close(estimate, model(coarse)[0].clamp(-1, 1), atol=1e-6, rtol=0)  # what forward estimates
    assert torch.equal(refine(model, coarse, strength=0.0, steps=3, seed=9), estimate)  # no noise is drawn
    assert torch.equal(refine(Refiner(dataclasses.replace(model.config, detail=False)).eval(), coarse), coarse)  # untrained
    near = refine(model, coarse, strength=0.05, steps=2)
    far = refine(model, coarse, strength=1.0, steps=2)
    assert (near - estimate).abs().mean() < 0.5 * (far - estimate).abs().mean()


@pytest.mark.parametrize("strength", [1.0, 0.6, 0.0])
@pytest.mark.parametrize("length", [1001, 2048, 4096 + 37, 9000])
def test_sampler_with_perfect_networks_recovers_the_target_at_any_length(strength, length):
    """DDIM with the exact v returns x0 and so the clean audio; chunked, padded and odd lengths included,
    seams and all. At strength 0 the estimate alone: half the correction."""
    cfg = tiny_refiner_config(chunk_length=2048, overlap_length=128, envelope_window=256)
    oracle = OracleRefiner(cfg)
    coarse = music(1.2, seed=2)[:, :, :length].repeat(2, 1, 1)  # batch of two
    out = refine(oracle, coarse, steps=3, strength=strength, seed=5)
    assert out.shape == coarse.shape
    torch.testing.assert_close(out, restore(coarse) if strength else 0.9 * coarse, atol=2e-5, rtol=0)


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


def randomised(model: Refiner, seed: int = 0) -> Refiner:
    """A copy whose zero-initialised layers are random too, so every path carries signal."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    for p in model.parameters():
        if (p == 0).all():
            nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.mark.parametrize("changes", [{}, dict(channels=[8, 16, 16, 32], factors=[2, 4, 2], res_blocks=2, attention_levels=2, chunk_length=4096)])
def test_receptive_field_bounds_how_far_a_change_travels(changes):
    """Change the coarse audio at one sample: each U-Net's output moves within its receptive field and
    nowhere else, the refined audio (envelope, estimator, then the detail model at every DDIM step)
    within the refiner's reach, and neither bound is loose (the change reaches well over half of it)."""
    cfg = tiny_refiner_config(**changes)
    model = randomised(Refiner(cfg))
    length, at = 16384, 8000
    coarse = torch.randn(1, 1, length) * 0.1
    bumped = coarse.clone()
    bumped[..., at] += 0.5

    def reach(moved: torch.Tensor, field: int) -> None:
        where = moved.nonzero().flatten()
        assert at - field <= where.min() and where.max() <= at + field, (where.min(), where.max(), field)
        assert where.max() - at > 0.5 * field, (where.max() - at, field)

    t, x = torch.tensor([0.5]), torch.randn(1, 1, length)
    with torch.no_grad():
        reach((model.detail(torch.cat([x, bumped, x], 1), t) - model.detail(torch.cat([x, coarse, x], 1), t)).abs()[0, 0],
              model.receptive_field)
        reach((model.estimator(bumped) - model.estimator(coarse)).abs()[0, 0], model.receptive_field)
    chunk, steps = 1 << 15, 2
    reach((refine(model, bumped, steps, seed=0, chunk_length=chunk) - refine(model, coarse, steps, seed=0, chunk_length=chunk)).abs()[0, 0],
          model.reach(steps))


@pytest.mark.parametrize("length", [12000, 12007])
def test_chunked_equals_unchunked_everywhere_and_seams_are_continuous(trained, length):
    """The U-Nets are local and each chunk discards one receptive field at its inner edges, so refining
    in chunks gives the whole-track result at every sample, seams included, up to float rounding
    (and the randomised networks, where every layer carries signal, too)."""
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
        torch.testing.assert_close(refine(model, coarse, strength=0.0), refine(model, coarse, strength=0.0, chunk_length=12288),
                                   atol=2e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_load_refiner_prefers_ema_and_checks_the_vqvae(tmp_path):
    vqvae = tiny_refiner_vqvae(seed=0)
    fingerprint = vqvae.fingerprint()
    save_checkpoint(tmp_path / "vqvae" / "last.pt", "vqvae", dataclasses.asdict(vqvae.config), vqvae.state_dict())
    assert load_vqvae(tmp_path / "vqvae").fingerprint() == fingerprint
    assert tiny_refiner_vqvae(seed=1).fingerprint() != fingerprint

    torch.manual_seed(0)
    model = Refiner(tiny_refiner_config(), vqvae_fingerprint=fingerprint)
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
        save_refiner(tmp_path / "bad.pt", Refiner(tiny_refiner_config()))


def test_a_diffusion_only_checkpoint_from_before_the_estimator_is_refused(tmp_path):
    model = Refiner(tiny_refiner_config(), vqvae_fingerprint="abc")
    config = {**dataclasses.asdict(model.config), "target": "residual"}
    del config["envelope_window"], config["detail"]
    save_checkpoint(tmp_path / "old.pt", "refiner", config, model.state_dict(), vqvae_fingerprint="abc")
    with pytest.raises(UserError, match="earlier diffusion-only refiner .* made recorded music worse; retrain it with train-refiner"):
        load_refiner(tmp_path / "old.pt")


def test_a_groupnorm_checkpoint_from_before_chunk_exact_refinement_is_refused(tmp_path):
    model = Refiner(tiny_refiner_config(), vqvae_fingerprint="abc")
    config = {**dataclasses.asdict(model.config), "norm_groups": 4}
    del config["attention_window"], config["chunk_length"]
    save_checkpoint(tmp_path / "old.pt", "refiner", config, model.state_dict(), vqvae_fingerprint="abc")
    with pytest.raises(UserError, match="older GroupNorm U-Net.*retrain it with train-refiner"):
        load_refiner(tmp_path / "old.pt")
