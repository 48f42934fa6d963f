"""The prior's transformer: OpenAI Jukebox's blocks (Conv1D weights stored (in, out), factorized
attention, quick-GELU MLP, pre-norm residual blocks), in their parameter layout so released weights
load unchanged. Shapes: (batch, tokens, width) throughout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from jukebox_lite.core.config import PriorConfig
from jukebox_lite.nn.attention import PRIME, attn_func_for_layer, prime_attention, window_attention


class Conv1D(nn.Module):
    """A linear layer whose weight is stored (in, out) as `w`, like OpenAI's (and GPT-2's) Conv1D."""

    def __init__(self, n_in: int, n_out: int, init_scale: float = 1.0):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out) * (0.02 * init_scale))
        self.b = nn.Parameter(torch.zeros(n_out))

    @classmethod
    def from_weights(cls, w: nn.Parameter, b: nn.Parameter) -> "Conv1D":
        """A Conv1D holding these parameters (no random initialisation of a throwaway weight)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.w, layer.b = w, b
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w.t(), self.b)


class FactorizedAttention(nn.Module):
    """Multi-head self-attention restricted to one factorized pattern (see nn/attention.py)."""

    def __init__(self, cfg: PriorConfig, attn_func: int):
        super().__init__()
        self.n_state = int(cfg.m_attn * cfg.width)
        self.heads, self.attn_func = cfg.heads, attn_func
        self.block_ctx, self.n_ctx = cfg.block_ctx, cfg.context
        self.prime_keys = cfg.prime_keys
        self.c_attn = Conv1D(cfg.width, 3 * self.n_state, cfg.init_scale)
        self.c_proj = Conv1D(self.n_state, cfg.width, cfg.init_scale)

    def forward(self, x: torch.Tensor, start: int, cache=None) -> torch.Tensor:
        """x: (B, L, W) at window positions start..start+L-1 (a whole window from 0 when cache is None)."""
        B, L, _ = x.shape
        # (B, L, 3·n_state) → 3 × (B, H, L, n_state/H): q, k, v are contiguous thirds, heads contiguous slices
        q, k, v = (
            t.view(B, L, self.heads, -1).transpose(1, 2) for t in self.c_attn(x).chunk(3, dim=-1)
        )
        if cache is None and self.attn_func == PRIME:
            a = prime_attention(q, k, v, self.block_ctx, self.n_ctx, self.prime_keys)
        elif cache is None:  # a whole window from position 0
            a = window_attention(q, k, v, self.attn_func, self.block_ctx, self.n_ctx)
        else:
            a = cache.attend(q, k, v, start)
        a = a.transpose(1, 2).reshape(B, L, self.n_state)  # merge heads
        return self.c_proj(a)

    def step(self, x: torch.Tensor, t: int, cache) -> torch.Tensor:
        """x: (B, W) at position t → (B, W), through the cache's sliced step."""
        B = x.shape[0]
        qkv = torch.addmm(self.c_attn.b, x, self.c_attn.w)  # (B, 3·n_state)
        q, k, v = qkv.view(B, 3, self.heads, 1, -1).unbind(1)  # 3 × (B, H, 1, n_state/H)
        a = cache.step(q, k, v, t).reshape(B, self.n_state)
        return torch.addmm(self.c_proj.b, a, self.c_proj.w)


class MLP(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        hidden = int(cfg.m_mlp * cfg.width)
        self.c_fc = Conv1D(cfg.width, hidden, cfg.init_scale)
        self.c_proj = Conv1D(hidden, cfg.width, cfg.init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))  # quick-GELU

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """forward for x: (B, W), calling the kernels directly."""
        h = torch.addmm(self.c_fc.b, x, self.c_fc.w)
        return torch.addmm(self.c_proj.b, torch.sigmoid(h * 1.702).mul_(h), self.c_proj.w)


class ResAttnBlock(nn.Module):
    """x + a + m with a = attn(ln_0(x)), m = mlp(ln_1(x + a)): OpenAI's block (no final layer norm)."""

    def __init__(self, cfg: PriorConfig, attn_func: int):
        super().__init__()
        self.attn = FactorizedAttention(cfg, attn_func)
        self.ln_0 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)
        self.ln_1 = nn.LayerNorm(cfg.width)

    def forward(self, x: torch.Tensor, start: int, cache=None) -> torch.Tensor:
        a = self.attn(self.ln_0(x), start, cache)
        m = self.mlp(self.ln_1(x + a))
        return x + a + m

    def step(self, x: torch.Tensor, t: int, cache) -> torch.Tensor:
        """forward for one position t of incremental decoding, x: (B, W) → (B, W).

        A sampled token costs ~100 small operations at batch 1, so their count and the Python around
        them set the speed: the step calls the kernels directly (no module calls, no sequence axis).
        The tests hold it equal to forward.
        """
        ln_0, ln_1 = self.ln_0, self.ln_1
        a = self.attn.step(F.layer_norm(x, ln_0.normalized_shape, ln_0.weight, ln_0.bias, ln_0.eps), t, cache)
        m = self.mlp.step(F.layer_norm(x + a, ln_1.normalized_shape, ln_1.weight, ln_1.bias, ln_1.eps))
        return x + a + m


class Transformer(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self._attn_mods = nn.ModuleList(
            ResAttnBlock(cfg, attn_func_for_layer(cfg.attn_order, d)) for d in range(cfg.depth)
        )
        self.checkpoint_layers = cfg.checkpoint_layers

    def forward(self, x: torch.Tensor, start: int, caches=None) -> torch.Tensor:
        recompute = self.checkpoint_layers and caches is None and torch.is_grad_enabled()
        for i, block in enumerate(self._attn_mods):
            if recompute:  # keep only each layer's input; its insides are recomputed in backward
                x = torch.utils.checkpoint.checkpoint(block, x, start, use_reentrant=False)
            else:
                x = block(x, start, None if caches is None else caches[i])
        return x

    def step(self, x: torch.Tensor, t: int, caches) -> torch.Tensor:
        """x: (B, W) at position t → (B, W); see ResAttnBlock.step."""
        for block, cache in zip(self._attn_mods, caches):
            x = block.step(x, t, cache)
        return x
