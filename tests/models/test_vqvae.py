"""The VQ-VAE: OpenAI's layout, codebook maths, losses, equivalence with OpenAI's code, training."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import jukebox_lite.models.vqvae as vqvae_module
from jukebox_lite.core.checkpoint import save_checkpoint
from jukebox_lite.core.config import VQVAEConfig, load_config
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.losses import MultiSpectralLoss, compute_bandwidth, linf_loss
from jukebox_lite.nn.conv import Conv1d, ConvTranspose1d, from_time_as_width, to_time_as_width
from jukebox_lite.models.vqvae import VQVAE, BottleneckBlock
from jukebox_lite.models.checkpoints import load_vqvae
from tests.helpers import FIXTURES, JUKEBOX_FORMAT, tiny_vqvae_config

FORMAT_DIR = JUKEBOX_FORMAT
FIXTURE = FIXTURES / "openai_vqvae_small.pt"


def synth_audio(batch: int, length: int, seed: int, sr: int = 44100) -> torch.Tensor:
    """Sines at random pitches plus a decaying noise burst: (batch, 1, length) in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / sr
    freqs = 100 + 2000 * torch.rand(batch, 2, 1, generator=gen)
    tone = (0.3 * torch.sin(2 * math.pi * freqs * t)).sum(dim=1)
    burst = 0.2 * torch.randn(batch, length, generator=gen) * torch.exp(-t * 2000)
    return (tone + burst).clamp(-1, 1)[:, None, :]


# ----------------------------------------------------------------------------------------------
# Layout and shapes


def read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if not line.startswith("#")]
    return {key: tuple(int(v) for v in shape.strip("()").split(",") if v.strip()) for key, shape in rows}


def test_state_dict_is_openai_layout():
    reference = read_tsv(FORMAT_DIR / "vqvae_released_hparams.tsv")
    model = VQVAE(VQVAEConfig())
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert len(reference) == 669
    for key, shape in reference.items():
        assert ours.get(key) == shape, key
    # beyond OpenAI's keys only the documented training state (EMA statistics, bandwidth)
    assert set(ours) - set(reference) == set(model.extra_state_keys())


def test_hop_lengths_and_code_lengths_at_released_settings():
    model = VQVAE(VQVAEConfig()).eval()
    assert model.hop_lengths == [8, 32, 128]
    assert model.sample_rate == 44100
    x = synth_audio(2, 1024, seed=0)
    codes = model.encode(x)
    assert [tuple(c.shape) for c in codes] == [(2, 128), (2, 32), (2, 8)]
    assert all(c.dtype == torch.long for c in codes)
    audio = model.decode([None, None, codes[2]], level=2)
    assert audio.shape == (2, 1, 1024) and audio.dtype == torch.float32


def test_encode_rejects_bad_shapes():
    model = VQVAE(tiny_vqvae_config()).eval()
    with pytest.raises(ValueError, match="multiple of the hop"):
        model.encode(torch.zeros(1, 1, 100))
    with pytest.raises(ValueError, match="batch, 1, time"):
        model.encode(torch.zeros(1, 2, 1024))
    with pytest.raises(ValueError, match="needs the codes of level 1"):
        model.decode([torch.zeros(1, 512, dtype=torch.long), None, None], level=1)


def test_config_validation_and_recipe_section():
    with pytest.raises(UserError, match="sample_length"):
        VQVAEConfig(sample_length=1000).validate()
    with pytest.raises(UserError, match="downs_t"):
        VQVAEConfig(downs_t=[3, 2]).validate()
    with pytest.raises(UserError, match="multipliers"):
        VQVAEConfig(multipliers=[1, 1]).validate()
    with pytest.raises(UserError, match="STFT"):
        VQVAEConfig(stft_window_size=[4096, 600, 240]).validate()
    cfg = load_config(None, ["vqvae.downs_t=[1,1,1]", "vqvae.sample_length=8192"])
    assert cfg.vqvae.hop_lengths == [2, 4, 8]


# ----------------------------------------------------------------------------------------------
# Codebook maths


@pytest.mark.parametrize("kind", [Conv1d, ConvTranspose1d])
@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (1, 9, 9), (2, 1, 1)])
def test_time_as_width_convolution_equals_the_1d_one(kind, stride, padding, dilation):
    """Same module, same weights: (B, C, 1, T) channels-last input gives the 1-D output and gradients."""
    torch.manual_seed(0)
    kernel = 3 if stride == 1 else 4
    conv = kind(6, 5, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 6, 40, requires_grad=True)
    y = conv(x)
    y.pow(2).sum().backward()
    grads = (x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone())
    conv.zero_grad()
    x2 = to_time_as_width(x.detach()).requires_grad_()
    y2 = conv(x2)
    assert y2.shape == (2, 5, 1, y.shape[2]) and y2.is_contiguous(memory_format=torch.channels_last)
    from_time_as_width(y2).pow(2).sum().backward()
    assert torch.allclose(from_time_as_width(y2), y, atol=1e-5)
    for a, b in zip(grads, (from_time_as_width(x2.grad), conv.weight.grad, conv.bias.grad)):
        assert torch.allclose(a, b, atol=1e-4)


def test_channels_last_layout_is_the_same_model():
    """`channels_last` changes how the convolutions run, not the model: same keys, shapes, fingerprint,
    codes, audio, loss and gradients as plain 1-D convolutions."""
    torch.manual_seed(0)
    plain = VQVAE(tiny_vqvae_config(channels_last=False))
    fast = VQVAE(tiny_vqvae_config(channels_last=True))
    fast.load_state_dict(plain.state_dict())
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    convs = [m for m in fast.modules() if isinstance(m, (Conv1d, ConvTranspose1d))]
    assert convs and all(m.weight[:, :, None].is_contiguous(memory_format=torch.channels_last) for m in convs)
    x = synth_audio(2, 1024, seed=5)
    plain.train()(x)  # first batch initialises the codebooks
    fast.load_state_dict(plain.state_dict())
    assert fast.fingerprint() == plain.fingerprint()
    _, plain_metrics = plain(x)
    _, fast_metrics = fast(x)
    assert torch.allclose(plain_metrics["loss"], fast_metrics["loss"], rtol=1e-5)
    plain_metrics["loss"].backward()
    fast_metrics["loss"].backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-6), name
    plain.eval(), fast.eval()
    codes = plain.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(codes, fast.encode(x)))
    for level in range(3):
        assert torch.allclose(plain.decode(codes, level), fast.decode(codes, level), atol=1e-6)


def make_block(mu: float = 0.9) -> BottleneckBlock:
    block = BottleneckBlock(l_bins=4, emb_width=2, mu=mu, threshold=1.0)
    block.k.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    block.k_sum.copy_(block.k * 2.0)
    block.k_elem.fill_(2.0)
    block.initialised.fill_(True)
    return block


def test_quantise_picks_nearest_code():
    block = make_block()
    x = torch.tensor([[0.1, -0.1], [0.9, 0.2], [0.2, 0.7], [4.0, 6.0]])
    codes, distance = block.quantise(x)
    assert codes.tolist() == [0, 1, 2, 3]
    assert torch.allclose(distance, ((x - block.k[codes]) ** 2).sum(dim=1), atol=1e-6)


def test_quantise_in_blocks_equals_searching_one_table(monkeypatch):
    torch.manual_seed(0)
    block = BottleneckBlock(l_bins=16, emb_width=4, mu=0.99)
    block.k.copy_(torch.randn(16, 4))
    x = torch.randn(50, 4)
    monkeypatch.setattr(vqvae_module, "DISTANCE_TABLE_ENTRIES", 16 * 7)  # blocks of 7 rows, the last one short
    codes, distance = block.quantise(x)
    table = torch.cdist(x, block.k) ** 2  # (50, 16)
    assert torch.equal(codes, table.argmin(dim=1))
    assert torch.allclose(distance, table.min(dim=1).values, atol=1e-5)


def test_ema_update_equals_formula():
    block = make_block(mu=0.9)
    x = torch.tensor([[0.1, 0.0], [0.3, 0.0], [1.0, 0.4], [0.0, 1.2], [0.2, 0.0]])
    codes = torch.tensor([0, 0, 1, 2, 0])
    k_sum, k_elem = block.k_sum.clone(), block.k_elem.clone()
    metrics = block.update_codebook(x, codes)
    batch_sum = torch.stack([x[codes == j].sum(dim=0) for j in range(4)])
    batch_count = torch.tensor([3.0, 1.0, 1.0, 0.0])
    expected_sum = 0.9 * k_sum + 0.1 * batch_sum
    expected_elem = 0.9 * k_elem + 0.1 * batch_count
    assert torch.allclose(block.k_sum, expected_sum)
    assert torch.allclose(block.k_elem, expected_elem)
    # every EMA count is still ≥ 1, so every entry is the EMA mean and nothing restarts
    assert torch.allclose(block.k, expected_sum / expected_elem[:, None])
    assert metrics["restarts"] == 0 and metrics["usage"] == 4 and metrics["used_curr"] == 3


def test_dead_codes_restart_from_batch_and_live_ones_do_not():
    torch.manual_seed(0)
    block = make_block(mu=0.9)
    block.k_elem[3] = 0.5  # code 3 is dead: its EMA count falls to 0.45 < 1 this step
    x = torch.randn(64, 2)
    codes, _ = block.quantise(x)
    codes[codes == 3] = 0
    metrics = block.update_codebook(x, codes)
    expected_live = block.k_sum[:3] / block.k_elem[:3, None]
    assert torch.allclose(block.k[:3], expected_live)
    # the restarted code is one of the batch's vectors (no jitter when the batch is large enough)
    assert torch.isclose(x, block.k[3]).all(dim=1).any()
    assert metrics["restarts"] == 1 and metrics["usage"] == 3


def test_first_batch_initialises_codebook_from_encoder_outputs():
    torch.manual_seed(0)
    block = BottleneckBlock(l_bins=8, emb_width=3, mu=0.99)
    vectors = torch.randn(32, 3)  # more vectors than codes: picked without jitter
    block.init_codebook(vectors)
    for row in block.k:
        assert (vectors == row).all(dim=1).any()
    assert len({tuple(row.tolist()) for row in block.k}) == 8  # distinct picks
    assert torch.equal(block.k_sum, block.k) and torch.equal(block.k_elem, torch.ones(8))
    # the first training forward initialises an empty codebook by itself
    fresh = BottleneckBlock(l_bins=8, emb_width=3, mu=0.99).train()
    fresh(torch.randn(2, 3, 16), update=True)
    assert bool(fresh.initialised) and fresh.k.abs().sum() > 0


def test_straight_through_gradient_and_commit_loss():
    block = make_block().train()
    x = torch.tensor([[[0.2, 0.9, 4.0], [0.1, 0.3, 5.5]]], requires_grad=True)  # (1, w=2, T=3)
    codebook = block.k.clone()
    codes, quantised, commit, _ = block(x, update=True)
    assert codes.tolist() == [[0, 1, 3]]
    assert torch.allclose(quantised, codebook[codes[0]].t()[None])  # forward value: codebook before the update
    expected_commit = ((x - codebook[codes[0]].t()[None]) ** 2).mean()
    assert torch.isclose(commit, expected_commit)
    (quantised * torch.arange(6.0).view(1, 2, 3)).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0).view(1, 2, 3))  # gradient passes straight through


def test_eval_mode_leaves_codebook_alone_and_blocks_gradient():
    block = make_block().eval()
    k_before = block.k.clone()
    x = torch.randn(1, 2, 5, requires_grad=True)
    _, quantised, _, _ = block(x, update=False)
    assert torch.equal(block.k, k_before) and not quantised.requires_grad


def test_distributed_hooks_run_in_a_one_process_group(tmp_path):
    """The all-reduce/broadcast path runs (gloo, world of one) and gives the single-process result."""
    import torch.distributed as dist

    torch.manual_seed(0)
    x = torch.randn(32, 2)
    single, grouped = make_block(), make_block()
    single.k_elem[3] = grouped.k_elem[3] = 0.5  # one dead code, so the broadcast of restarts runs too
    codes, _ = single.quantise(x)
    rng = torch.get_rng_state()
    single.update_codebook(x, codes)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.set_rng_state(rng)
        grouped.update_codebook(x, codes)
    finally:
        dist.destroy_process_group()
    assert torch.equal(grouped.k, single.k) and torch.equal(grouped.k_sum, single.k_sum)


# ----------------------------------------------------------------------------------------------
# Losses


def test_linf_is_mean_of_top_k_squared_errors():
    target = torch.zeros(2, 1, 6)
    pred = torch.tensor([[[0.1, -3.0, 0.2, 2.0, 0.0, 0.5]], [[1.0, 1.0, 1.0, 1.0, 1.0, -4.0]]])
    # item 0: top-2 squares 9, 4; item 1: 16, 1
    assert torch.isclose(linf_loss(target, pred, k=2), torch.tensor((9 + 4 + 16 + 1) / 4))


def test_multispectral_loss_zero_for_identical_and_positive_otherwise():
    loss = MultiSpectralLoss([256, 128], [64, 32], [128, 64])
    x = synth_audio(2, 2048, seed=1)
    assert loss(x, x.clone()).item() == 0.0
    assert loss(x, 0.5 * x).item() > 0.1
    assert list(loss.state_dict()) == []  # windows stay out of checkpoints


def test_compute_bandwidth_statistics():
    gen = torch.Generator().manual_seed(0)
    clips = [0.1 + 0.5 * torch.randn(1, 4096, generator=gen) for _ in range(3)]
    bandwidth = compute_bandwidth(clips)
    samples = torch.cat(clips, dim=1).double()
    assert math.isclose(bandwidth["l2"], samples.var(unbiased=False).item(), rel_tol=1e-9)
    assert math.isclose(bandwidth["l1"], samples.abs().mean().item(), rel_tol=1e-9)
    assert bandwidth["spec"] > 0
    model = VQVAE(tiny_vqvae_config())
    model.set_bandwidth(bandwidth)
    assert model.state_dict()["bandwidth_l2"].item() == pytest.approx(bandwidth["l2"])


# ----------------------------------------------------------------------------------------------
# Equivalence with OpenAI's implementation (fixture made by their code, see docs/openai_equivalence.md)


def test_matches_openai_reference():
    fixture = torch.load(FIXTURE, weights_only=True)
    hps = fixture["hps"]
    cfg = VQVAEConfig(
        sample_rate=hps["sr"],
        sample_length=hps["sample_length"],
        levels=hps["levels"],
        downs_t=hps["downs_t"],
        strides_t=hps["strides_t"],
        emb_width=hps["emb_width"],
        l_bins=hps["l_bins"],
        width=hps["width"],
        depth=hps["depth"],
        m_conv=hps["m_conv"],
        dilation_growth_rate=hps["dilation_growth_rate"],
        dilation_cycle=hps["dilation_cycle"],
        multipliers=hps["hvqvae_multipliers"],
        reverse_decoder_dilation=hps["vqvae_reverse_decoder_dilation"],
        commit=hps["commit"],
        l2_weight=hps["lmix_l2"],
        linf_weight=hps["lmix_linf"],
        linf_k=hps["linf_k"],
        multispectral_weight=hps["multispectral"],
    )
    model = VQVAE(cfg)
    state = model.state_dict()
    assert set(fixture["state_dict"]) == set(state) - set(model.extra_state_keys())
    state.update(fixture["state_dict"])
    model.load_state_dict(state)
    model.set_bandwidth(hps["bandwidth"])
    model.eval()

    codes = model.encode(fixture["audio"])
    for level in range(3):
        assert torch.equal(codes[level], fixture["codes"][level]), f"codes differ at level {level}"
        decoded = model.decode(fixture["codes"], level=level)
        torch.testing.assert_close(decoded, fixture["decoded"][level], rtol=1e-5, atol=1e-6)

    with torch.no_grad():
        _, metrics = model(fixture["audio"])
    theirs = fixture["metrics"]
    for level in range(3):  # OpenAI numbers levels from 1
        torch.testing.assert_close(metrics[f"recons_l{level}"], theirs[f"recons_loss_l{level + 1}"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            metrics[f"multispectral_l{level}"], theirs[f"multispectral_loss_l{level + 1}"], rtol=1e-5, atol=1e-5
        )
    commit = sum(metrics[f"commit_l{level}"] for level in range(3))
    torch.testing.assert_close(commit, theirs["commit_loss"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(metrics["loss"], fixture["loss"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Checkpoints and training


def test_load_vqvae_round_trip_prefers_ema(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_vqvae_config()
    model = VQVAE(cfg).train()
    model(synth_audio(2, 1024, seed=2))  # initialise the codebooks
    ema = {k: v + 0.01 for k, v in model.state_dict().items() if k.startswith("decoders.")}
    save_checkpoint(tmp_path / "last.pt", "vqvae", dataclasses.asdict(cfg), model.state_dict(), ema=ema)
    loaded = load_vqvae(tmp_path)
    assert not loaded.training
    x = synth_audio(1, 1024, seed=3)
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(model.encode(x), loaded.encode(x)))
    assert torch.equal(loaded.state_dict()["decoders.0.out.bias"], ema["decoders.0.out.bias"])
    assert torch.equal(loaded.bottleneck.level_blocks[1].k_sum, model.bottleneck.level_blocks[1].k_sum)


def test_load_vqvae_names_a_mismatched_key(tmp_path):
    cfg = tiny_vqvae_config()
    state = VQVAE(cfg).state_dict()
    state["decoders.1.out.weight"] = torch.zeros(1, 8, 5)
    save_checkpoint(tmp_path / "last.pt", "vqvae", dataclasses.asdict(cfg), state)
    with pytest.raises(UserError, match="decoders.1.out.weight"):
        load_vqvae(tmp_path / "last.pt")


def test_tiny_vqvae_learns_to_reconstruct():
    torch.manual_seed(0)
    cfg = tiny_vqvae_config(sample_length=512, width=8)
    model = VQVAE(cfg).train()
    model.set_bandwidth(compute_bandwidth(synth_audio(8, cfg.sample_length, seed=100)[:, 0]))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = last = None
    for step in range(100):
        _, metrics = model(synth_audio(2, cfg.sample_length, seed=step))
        optimizer.zero_grad(set_to_none=True)
        metrics["loss"].backward()
        optimizer.step()
        if step < 5:
            first = metrics["l2_l0"] if first is None else first + metrics["l2_l0"]
        if step >= 95:
            last = metrics["l2_l0"] if last is None else last + metrics["l2_l0"]
    model.eval()
    _, held_out = model(synth_audio(4, cfg.sample_length, seed=999))
    assert torch.isfinite(metrics["loss"])
    assert last / 5 < 0.3 * (first / 5), (first / 5, last / 5)
    assert held_out["l2_l0"] < 0.5 * first / 5
    assert held_out["perplexity_l0"] > 2.0  # more than a couple of codes in use


def _two_rank_worker(rank: int, store: str, results) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = VQVAE(tiny_vqvae_config(l_bins=64, revival_threshold=5.0)).train()  # many restarts
        torch.manual_seed(100 + rank)  # each rank draws different random numbers
        restarts = 0.0
        for step in range(3):
            _, metrics = model(synth_audio(2, 1024, seed=10 * step + rank))  # and sees different data
            restarts += float(metrics["restarts_l0"])
        blocks = model.bottleneck.level_blocks
        results[rank] = (torch.cat([b.k.flatten() for b in blocks] + [b.k_elem for b in blocks]), restarts)
    finally:
        torch.distributed.destroy_process_group()


def test_codebooks_stay_identical_across_two_ranks(tmp_path):
    """Two gloo processes with different data and seeds end with the same codebooks and EMA state."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_two_rank_worker, args=(str(tmp_path / "store"), results), nprocs=2)
        (k0, restarts), (k1, _) = results[0], results[1]
    assert restarts > 0  # the broadcast of restart vectors ran
    assert torch.equal(k0, k1)
