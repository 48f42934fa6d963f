"""Jukebox's hierarchical VQ-VAE: three separate autoencoders over raw audio, one per level.

Level L's encoder downsamples audio by hop_lengths[L] (8 / 32 / 128 at the released settings), its
bottleneck snaps every vector to the nearest entry of an EMA-updated codebook, and its decoder
rebuilds the audio from that level's codes alone. Coarser levels keep less detail but give the
priors shorter sequences to model.

Parameter names and shapes are OpenAI's (`encoders.L.level_blocks.i...`, `bottleneck.level_blocks.L.k`),
so their released weights load unchanged (see `jukebox_import`). On top of OpenAI's keys our state
dict holds the training state OpenAI kept outside it: each codebook's EMA statistics (`k_sum`,
`k_elem`, `initialised`) and the data bandwidth (`bandwidth_*`), so a checkpoint resumes exactly.

Shapes: audio (batch, 1, time); latents (batch, emb_width, time / hop); codes (batch, time / hop).
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from jukebox_lite.core.config import VQVAEConfig
from jukebox_lite.core.precision import float32_region
from jukebox_lite.models.losses import MultiSpectralLoss, l2_loss, linf_loss, spectral_convergence
from jukebox_lite.nn.conv import (
    Conv1d,
    DecoderConvBlock,
    EncoderConvBlock,
    from_time_as_width,
    store_kernels_channels_last,
    to_time_as_width,
)


EMA_BUFFERS = ("k_sum", "k_elem", "initialised")  # per codebook, beyond OpenAI's `k`
BANDWIDTH_KEYS = ("l1", "l2", "spec")
DISTANCE_TABLE_ENTRIES = 2**22  # per block of the codebook search: 16 MB in float32


# ----------------------------------------------------------------------------------------------
# Encoder and decoder of one level


class LevelEncoder(nn.Module):
    """Raw audio → latents of one level: the conv blocks of levels 0..L chained (OpenAI's `Encoder`).

    (batch, 1, T) → (batch, emb_width, T / hop_L). Block i downsamples by strides_t[i]**downs_t[i].
    """

    def __init__(self, cfg: VQVAEConfig, level: int):
        super().__init__()
        mult = cfg.multipliers[level]
        self.channels_last = cfg.channels_last
        self.level_blocks = nn.ModuleList(
            EncoderConvBlock(
                1 if i == 0 else cfg.emb_width,
                cfg.emb_width,
                cfg.downs_t[i],
                cfg.strides_t[i],
                width=cfg.width * mult,
                depth=cfg.depth * mult,
                m_conv=cfg.m_conv,
                dilation_growth_rate=cfg.dilation_growth_rate,
                dilation_cycle=cfg.dilation_cycle,
            )
            for i in range(level + 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = to_time_as_width(x)  # (B, 1, 1, T)
        for block in self.level_blocks:
            x = block(x)
        return from_time_as_width(x) if self.channels_last else x


class LevelDecoder(nn.Module):
    """Latents of one level → raw audio: the conv blocks in reverse, then `out` to one channel.

    (batch, emb_width, T / hop_L) → (batch, 1, T).
    """

    def __init__(self, cfg: VQVAEConfig, level: int):
        super().__init__()
        mult = cfg.multipliers[level]
        self.channels_last = cfg.channels_last
        self.level_blocks = nn.ModuleList(
            DecoderConvBlock(
                cfg.emb_width,
                cfg.emb_width,
                cfg.downs_t[i],
                cfg.strides_t[i],
                width=cfg.width * mult,
                depth=cfg.depth * mult,
                m_conv=cfg.m_conv,
                dilation_growth_rate=cfg.dilation_growth_rate,
                dilation_cycle=cfg.dilation_cycle,
                reverse_dilation=cfg.reverse_decoder_dilation,
            )
            for i in range(level + 1)
        )
        self.out = Conv1d(cfg.emb_width, 1, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = to_time_as_width(x)  # (B, emb_width, 1, T / hop_L)
        for block in reversed(self.level_blocks):
            x = block(x)
        x = self.out(x)
        return from_time_as_width(x) if self.channels_last else x


# ----------------------------------------------------------------------------------------------
# Codebook


class BottleneckBlock(nn.Module):
    """One level's codebook: nearest-neighbour quantisation, EMA updates, dead-code restarts.

    The codebook `k` (l_bins, emb_width) learns without gradients: each training step moves every
    entry towards the mean of the encoder vectors assigned to it (EMA with decay `mu` of their sum
    `k_sum` and count `k_elem`). An entry whose EMA count falls below `threshold` is dead and is
    replaced by a random encoder vector of the current batch. The encoder learns through the
    straight-through estimator plus the commitment loss that pulls its outputs to their codes.

    Under torch.distributed the batch statistics are summed over the ranks and the random vectors
    (first-batch initialisation, restarts) come from rank 0, so every rank keeps the same codebook.
    """

    def __init__(self, l_bins: int, emb_width: int, mu: float, threshold: float = 1.0):
        super().__init__()
        self.l_bins, self.emb_width, self.mu, self.threshold = l_bins, emb_width, mu, threshold
        self.register_buffer("k", torch.zeros(l_bins, emb_width))
        self.register_buffer("k_sum", torch.zeros(l_bins, emb_width))
        self.register_buffer("k_elem", torch.zeros(l_bins))
        self.register_buffer("initialised", torch.tensor(False))

    # -- distributed helpers (no-ops in a single process)

    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        if self._distributed():
            dist.all_reduce(tensor)

    def _broadcast_from_first_rank(self, tensor: torch.Tensor) -> None:
        if self._distributed():
            dist.broadcast(tensor, src=0)

    # -- quantisation

    def quantise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, emb_width) → codes (N,) and squared distance to the chosen entry (N,).

        Rows go in blocks, so the (rows, l_bins) distance table stays at DISTANCE_TABLE_ENTRIES
        whatever N is (4 s of audio at hop 8 would otherwise need 180 MB at 2048 codes).
        """
        # ‖x − k‖² = ‖x‖² − 2x·k + ‖k‖²; ‖x‖² does not change the argmin, so it is added only for the distance.
        k_sq = (self.k**2).sum(dim=1)  # (l_bins,)
        codes, min_partial = [], []
        for rows in x.split(max(1, DISTANCE_TABLE_ENTRIES // self.l_bins)):
            partial = torch.addmm(k_sq, rows, self.k.t(), alpha=-2.0)  # (rows, l_bins)
            block_min, block_codes = partial.min(dim=1)
            codes.append(block_codes)
            min_partial.append(block_min)
        return torch.cat(codes), torch.cat(min_partial) + (x**2).sum(dim=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (B, emb_width, T) → codes (B, T)."""
        batch, width, time = x.shape
        with float32_region(x.device):
            codes, _ = self.quantise(x.float().transpose(1, 2).reshape(-1, width))
        return codes.view(batch, time)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, T) → latents (B, emb_width, T)."""
        return F.embedding(codes, self.k).transpose(1, 2)

    # -- training

    def _random_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """l_bins random rows of x (N, w), shared by all ranks; jittered repeats when N < l_bins."""
        n = x.shape[0]
        if n >= self.l_bins:
            picked = x[torch.randperm(n, device=x.device)[: self.l_bins]]
        else:
            repeats = math.ceil(self.l_bins / n)
            index = torch.randperm(n * repeats, device=x.device)[: self.l_bins] % n
            picked = x[index] + torch.randn(self.l_bins, x.shape[1], device=x.device) * (0.01 / math.sqrt(x.shape[1]))
        self._broadcast_from_first_rank(picked)
        return picked

    @torch.no_grad()
    def init_codebook(self, x: torch.Tensor) -> None:
        """Start the codebook from encoder vectors x (N, w) of the first batch (count 1 each)."""
        self.k.copy_(self._random_vectors(x))
        self.k_sum.copy_(self.k)
        self.k_elem.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def reset_ema(self, tokens_per_step: int) -> None:
        """Set the EMA statistics to a steady state around the current codebook (after importing
        weights that came without them): every entry used tokens_per_step / l_bins times per step."""
        expected = tokens_per_step / self.l_bins
        self.k_sum.copy_(self.k * expected)
        self.k_elem.fill_(expected)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update_codebook(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """One EMA step from encoder vectors x (N, w) and their codes (N,); returns usage metrics."""
        batch_sum = torch.zeros_like(self.k).index_add_(0, codes, x)  # (l_bins, w)
        batch_count = torch.bincount(codes, minlength=self.l_bins).to(x.dtype)  # (l_bins,)
        self._all_reduce(batch_sum)
        self._all_reduce(batch_count)

        self.k_sum.mul_(self.mu).add_(batch_sum, alpha=1.0 - self.mu)
        self.k_elem.mul_(self.mu).add_(batch_count, alpha=1.0 - self.mu)
        live = self.k_elem >= self.threshold  # (l_bins,), identical on every rank
        old_k = self.k.clone()
        new_k = self.k_sum / self.k_elem[:, None]
        n_dead = int(self.l_bins - live.sum().item())
        if n_dead:
            new_k = torch.where(live[:, None], new_k, self._random_vectors(x))
        self.k.copy_(new_k)

        prob = batch_count / batch_count.sum()
        entropy = -(prob * torch.log(prob + 1e-8)).sum()
        return {
            "usage": live.sum().float(),
            "used_curr": (batch_count >= self.threshold).sum().float(),
            "entropy": entropy,
            "perplexity": entropy.exp(),
            "restarts": x.new_tensor(float(n_dead)),
            "dk": torch.linalg.vector_norm(self.k - old_k) / math.sqrt(self.k.numel()),
        }

    def forward(self, x: torch.Tensor, update: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Latents (B, w, T) → codes (B, T), quantised latents (B, w, T) passing gradients straight
        through to x, commitment loss, metrics. `update` runs the EMA step (training only)."""
        batch, width, time = x.shape
        with float32_region(x.device):
            x = x.float()
            flat = x.detach().transpose(1, 2).reshape(-1, width)  # (B·T, w)
            if update and not bool(self.initialised):
                self.init_codebook(flat)
            codes, distance = self.quantise(flat)
            quantised = self.decode(codes.view(batch, time))  # (B, w, T), codebook before this step's update
            metrics = self.update_codebook(flat, codes) if update else {}
            commit_loss = F.mse_loss(x, quantised.detach())
            quantised = x + (quantised - x).detach() if self.training else quantised.detach()
        metrics["fit"] = distance.mean().detach()
        return codes.view(batch, time), quantised, commit_loss, metrics


class Bottleneck(nn.Module):
    """One `BottleneckBlock` per level, kept in `level_blocks` as in OpenAI's layout."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.level_blocks = nn.ModuleList(
            BottleneckBlock(cfg.l_bins, cfg.emb_width, cfg.mu, cfg.revival_threshold) for _ in range(cfg.levels)
        )


# ----------------------------------------------------------------------------------------------
# The model


class VQVAE(nn.Module):
    """Three-level VQ-VAE. `encode` / `decode` for the codes stage and sampling, `forward` for training."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.levels = cfg.levels
        self.sample_rate = cfg.sample_rate
        self.hop_lengths = cfg.hop_lengths
        self.encoders = nn.ModuleList(LevelEncoder(cfg, level) for level in range(cfg.levels))
        self.decoders = nn.ModuleList(LevelDecoder(cfg, level) for level in range(cfg.levels))
        self.bottleneck = Bottleneck(cfg)
        if cfg.channels_last:
            store_kernels_channels_last(self)
        self.multispectral = MultiSpectralLoss(cfg.stft_n_fft, cfg.stft_hop_length, cfg.stft_window_size)
        for key in BANDWIDTH_KEYS:  # 1.0 until `set_bandwidth` is called with the data's statistics
            self.register_buffer(f"bandwidth_{key}", torch.tensor(1.0))

    # -- state beyond OpenAI's layout

    def extra_state_keys(self) -> list[str]:
        """State-dict keys OpenAI's checkpoints lack: the codebooks' EMA state and the bandwidth."""
        return [f"bandwidth_{key}" for key in BANDWIDTH_KEYS] + [
            f"bottleneck.level_blocks.{level}.{name}" for level in range(self.levels) for name in EMA_BUFFERS
        ]

    def set_bandwidth(self, bandwidth: dict[str, float]) -> None:
        """Store the data statistics from `losses.compute_bandwidth` that normalise the losses."""
        for key in BANDWIDTH_KEYS:
            if not bandwidth[key] > 0:
                raise ValueError(f"bandwidth['{key}'] is {bandwidth[key]}; the training audio looks silent")
            getattr(self, f"bandwidth_{key}").fill_(float(bandwidth[key]))

    @property
    def bandwidth(self) -> dict[str, float]:
        return {key: float(getattr(self, f"bandwidth_{key}")) for key in BANDWIDTH_KEYS}

    # -- inference

    def _check_audio(self, x: torch.Tensor, levels: Sequence[int]) -> None:
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"expected audio shaped (batch, 1, time), got {tuple(x.shape)}")
        hop = max(self.hop_lengths[level] for level in levels)
        if x.shape[2] % hop:
            raise ValueError(f"audio length {x.shape[2]} is not a multiple of the hop length {hop}; pad it")

    @torch.no_grad()
    def encode(self, x: torch.Tensor, levels: Sequence[int] | None = None) -> list[torch.Tensor | None]:
        """Audio (B, 1, T) → codes per level, index 0 finest, each LongTensor (B, T / hop_L).

        `levels` restricts the work to some levels; the others are None in the returned list.
        """
        levels = range(self.levels) if levels is None else levels
        self._check_audio(x, levels)
        codes: list[torch.Tensor | None] = [None] * self.levels
        for level in levels:
            codes[level] = self.bottleneck.level_blocks[level].encode(self.encoders[level](x))
        return codes

    @torch.no_grad()
    def decode(self, codes: Sequence[torch.Tensor | None], level: int) -> torch.Tensor:
        """Audio (B, 1, T_L · hop_L) from level `level`'s codes (B, T_L) alone; other entries may be None."""
        if codes[level] is None:
            raise ValueError(f"decode(level={level}) needs the codes of level {level}, got None")
        latents = self.bottleneck.level_blocks[level].decode(codes[level])  # (B, emb_width, T_L)
        return self.decoders[level](latents).float()

    # -- long audio: chunked so memory stays bounded, exactly equal to the whole-track result

    def fingerprint(self) -> str:
        """Hash of the weights that decide the codes (the EMA statistics and bandwidth do not).

        The priors compare it with the codes' index, so they never train on tokens of another VQ-VAE.
        """
        digest = hashlib.sha256()
        skip = set(self.extra_state_keys())
        for key, value in sorted(self.state_dict().items()):
            if key in skip:
                continue
            value = value.detach().cpu().contiguous()
            digest.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def encoder_context(self) -> int:
        """Samples of audio on each side that any level's encoder output can see, rounded up to the top hop.

        Walks each encoder's convolutions in order: a conv (kernel k, dilation d, padding p, stride s)
        widens the view by p steps left and d·(k−1) − p right, a step being the product of the strides
        before it. Residual branches add their reach to the skip path's zero, so summing is exact.
        """
        reach = 0
        for encoder in self.encoders:
            step, left, right = 1, 0, 0
            for conv in (m for m in encoder.modules() if isinstance(m, nn.Conv1d)):
                (k,), (s,), (p,), (d,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
                left += p * step
                right += (d * (k - 1) - p) * step
                step *= s
            reach = max(reach, left, right)
        top = self.hop_lengths[-1]
        return -(-reach // top) * top

    def decoder_context(self, level: int) -> int:
        """Tokens on each side that one output sample of `level`'s decoder can depend on (rounded up).

        Walks the decoder's convolutions in order, tracking how many output samples a token has become:
        a conv (kernel k, dilation d, padding p) reaches max(p, d·(k−1) − p) steps of its own resolution; a
        transposed conv (kernel k, stride s) reaches ⌈k / s⌉ steps of its input, then multiplies the rate.
        """
        reach, samples_per_token = 0.0, 1
        for layer in self.decoders[level].modules():
            if isinstance(layer, nn.ConvTranspose1d):
                (k,), (s,) = layer.kernel_size, layer.stride
                reach += math.ceil(k / s) / samples_per_token
                samples_per_token *= s
            elif isinstance(layer, nn.Conv1d):
                (k,), (p,), (d,) = layer.kernel_size, layer.padding, layer.dilation
                reach += max(p, d * (k - 1) - p) / samples_per_token
        return math.ceil(reach) + 1

    @torch.no_grad()
    def encode_long(self, waveform: torch.Tensor, chunk_samples: int, batch_size: int = 4) -> list[torch.Tensor]:
        """Mono audio (time,) → codes per level, each LongTensor (padded_time / hop_L,) on the CPU.

        The audio is zero-padded to a multiple of the top hop. Windows of chunk + 2·context samples
        (shifted inward at the file's ends, so every window has the same length and they batch) are
        encoded and only each window's chunk is kept: the result equals encoding the whole file at once.
        """
        hops, top = self.hop_lengths, self.hop_lengths[-1]
        device = next(self.parameters()).device
        chunk = max(top, chunk_samples // top * top)
        context = self.encoder_context()
        length = -(-waveform.shape[-1] // top) * top
        padded = F.pad(waveform.float(), (0, length - waveform.shape[-1]))
        window = chunk + 2 * context
        if length <= window:  # one window: the whole file
            return [c[0].cpu() for c in self.encode(padded.to(device)[None, None])]

        starts = list(range(0, length, chunk))  # chunk starts
        pieces: list[list[torch.Tensor]] = [[] for _ in hops]
        for first in range(0, len(starts), batch_size):
            batch_starts = starts[first : first + batch_size]
            window_starts = [min(max(0, s - context), length - window) for s in batch_starts]
            batch = torch.stack([padded[w : w + window] for w in window_starts])[:, None]  # (B, 1, window)
            codes = self.encode(batch.to(device))  # per level (B, window / hop_L)
            for level, hop in enumerate(hops):
                for row, (s, w) in enumerate(zip(batch_starts, window_starts)):
                    keep = min(chunk, length - s)
                    begin = (s - w) // hop
                    pieces[level].append(codes[level][row, begin : begin + keep // hop].cpu())
        return [torch.cat(level_pieces) for level_pieces in pieces]

    @torch.no_grad()
    def decode_long(self, codes: torch.Tensor, level: int, chunk_tokens: int = 4096) -> torch.Tensor:
        """Codes (B, T) of `level` → audio (B, 1, T · hop) on the CPU, decoded in overlapping windows.

        Each window holds `chunk_tokens` plus the decoder's context on both sides (shifted inward at the
        track's ends), and only its middle is kept, so the result equals decoding the whole track at once
        while the model only ever sees one window.
        """
        batch, length = codes.shape
        hop = self.hop_lengths[level]
        device = next(self.parameters()).device
        context = self.decoder_context(level)
        window = chunk_tokens + 2 * context
        if length <= window:
            return self.decode([None] * level + [codes.to(device)], level=level).cpu()
        audio = torch.empty(batch, 1, length * hop)
        for start in range(0, length, chunk_tokens):
            first = min(max(0, start - context), length - window)
            decoded = self.decode([None] * level + [codes[:, first : first + window].to(device)], level=level)
            keep = min(chunk_tokens, length - start)
            offset = (start - first) * hop
            audio[:, :, start * hop : (start + keep) * hop] = decoded[:, :, offset : offset + keep * hop].cpu()
        return audio

    # -- training

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Audio (B, 1, T) → (reconstruction per level (B, 1, T), metrics).

        metrics['loss'] is the training objective (summed over levels); every other entry is
        detached and suffixed with its level, e.g. 'l2_l0', 'multispectral_l2', 'commit_l1',
        'perplexity_l0', and, in training mode, 'usage_lL' (live codes), 'restarts_lL' (codes
        restarted this step), 'used_curr_lL', 'dk_lL'. In eval mode codebooks are left unchanged
        and 'spectral_convergence_lL' is added.
        """
        cfg = self.config
        self._check_audio(x, range(self.levels))
        target = x.float()
        update = self.training
        bw_l2, bw_spec = self.bandwidth_l2, self.bandwidth_spec
        target_spectra = self.multispectral.spectra(target)  # shared by the levels
        reconstructions, metrics = [], {}
        loss = x.new_zeros((), dtype=torch.float32)
        for level in range(self.levels):
            latents = self.encoders[level](x)  # (B, emb_width, T / hop)
            codes, quantised, commit, stats = self.bottleneck.level_blocks[level](latents, update)
            recon = self.decoders[level](quantised).float()  # (B, 1, T)
            terms = {
                "l2": l2_loss(target, recon) / bw_l2,
                "linf": linf_loss(target, recon, cfg.linf_k) / bw_l2,
                "multispectral": self.multispectral.from_spectra(target_spectra, recon) / bw_spec,
                "commit": commit,
            }
            level_loss = (
                cfg.l2_weight * terms["l2"]
                + cfg.linf_weight * terms["linf"]
                + cfg.multispectral_weight * terms["multispectral"]
                + cfg.commit * terms["commit"]
            )
            loss = loss + level_loss
            reconstructions.append(recon)
            terms["recons"] = cfg.l2_weight * terms["l2"] + cfg.linf_weight * terms["linf"]
            terms["loss"] = level_loss
            if "perplexity" not in stats:
                count = torch.bincount(codes.flatten(), minlength=cfg.l_bins).float()
                prob = count / count.sum()
                stats["perplexity"] = torch.exp(-(prob * torch.log(prob + 1e-8)).sum())
            if not self.training:
                with torch.no_grad():
                    terms["spectral_convergence"] = spectral_convergence(target, recon)
            for name, value in {**terms, **stats}.items():
                metrics[f"{name}_l{level}"] = value.detach()
        metrics["loss"] = loss
        return reconstructions, metrics
