"""Sample stage: long tracks from the trained models, every stage audible.

    jukebox-lite sample --run RUN --seconds 90 --n 4 --genre deep_house [--morph-to tech_house]
        [--prime intro.wav] [--temperature 0.98] [--seed 0] [--fast]

    top prior (level 2)   windowed sampling with genre and timing labels for every window
      → upsamplers        level 1 and level 0 codes conditioned on the level above (--fast skips them)
      → VQ-VAE decoding   each level decoded alone, in chunks (bounded memory for any length)
      → refiner           diffusion refinement of the decoded level it was trained on
    RUN/samples/<id>/{level2,level1,level0,refined}.wav, codes_level2.npy, meta.json

The fast path decodes level 1 and refines it with a refiner trained on level-1 audio
(refiner.cond_level 1), skipping the level-0 upsampler, which is by far the slowest stage.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from jukebox_lite.vqvae import VQVAE


def decoder_context(model: VQVAE, level: int) -> int:
    """Tokens on each side that one output sample of `level`'s decoder can depend on (rounded up).

    Walks the decoder's convolutions in order, tracking how many output samples a token has become:
    a conv (kernel k, dilation d, padding p) reaches max(p, d·(k−1) − p) steps of its own resolution; a
    transposed conv (kernel k, stride s) reaches ⌈k / s⌉ steps of its input, then multiplies the rate.
    """
    reach, samples_per_token = 0.0, 1
    for layer in model.decoders[level].modules():
        if isinstance(layer, nn.ConvTranspose1d):
            (k,), (s,) = layer.kernel_size, layer.stride
            reach += math.ceil(k / s) / samples_per_token
            samples_per_token *= s
        elif isinstance(layer, nn.Conv1d):
            (k,), (p,), (d,) = layer.kernel_size, layer.padding, layer.dilation
            reach += max(p, d * (k - 1) - p) / samples_per_token
    return math.ceil(reach) + 1


@torch.no_grad()
def decode_long(model: VQVAE, codes: torch.Tensor, level: int, chunk_tokens: int = 4096) -> torch.Tensor:
    """Codes (B, T) of `level` → audio (B, 1, T · hop) on the CPU, decoded in overlapping windows.

    Each window holds `chunk_tokens` plus the decoder's context on both sides (shifted inward at the
    track's ends), and only its middle is kept, so the result equals decoding the whole track at once
    while the model only ever sees one window.
    """
    batch, length = codes.shape
    hop = model.hop_lengths[level]
    device = next(model.parameters()).device
    context = decoder_context(model, level)
    window = chunk_tokens + 2 * context
    if length <= window:
        return model.decode([None] * level + [codes.to(device)], level=level).cpu()
    audio = torch.empty(batch, 1, length * hop)
    for start in range(0, length, chunk_tokens):
        first = min(max(0, start - context), length - window)
        decoded = model.decode([None] * level + [codes[:, first : first + window].to(device)], level=level)
        keep = min(chunk_tokens, length - start)
        offset = (start - first) * hop
        audio[:, :, start * hop : (start + keep) * hop] = decoded[:, :, offset : offset + keep * hop].cpu()
    return audio
