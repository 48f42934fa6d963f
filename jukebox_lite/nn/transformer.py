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
from jukebox_lite.nn.attention import attn_func_for_layer, window_attention


class Conv1D(nn.Module):
    """A linear layer whose weight is stored (in, out) as `w`, like OpenAI's (and GPT-2's) Conv1D."""

    def __init__(self, n_in: int, n_out: int, init_scale: float = 1.0):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out) * (0.02 * init_scale))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w.t(), self.b)


class FactorizedAttention(nn.Module):
    """Multi-head self-attention restricted to one factorized pattern (see nn/attention.py)."""

    def __init__(self, cfg: PriorConfig, attn_func: int):
        super().__init__()
        self.n_state = int(cfg.m_attn * cfg.width)
        self.heads, self.attn_func = cfg.heads, attn_func
        self.block_ctx, self.n_ctx = cfg.block_ctx, cfg.n_ctx
        self.c_attn = Conv1D(cfg.width, 3 * self.n_state, cfg.init_scale)
        self.c_proj = Conv1D(self.n_state, cfg.width, cfg.init_scale)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache=None) -> torch.Tensor:
        B, L, _ = x.shape
        # (B, L, 3·n_state) → 3 × (B, H, L, n_state/H): q, k, v are contiguous thirds, heads contiguous slices
        q, k, v = (
            t.view(B, L, self.heads, -1).transpose(1, 2) for t in self.c_attn(x).chunk(3, dim=-1)
        )
        if cache is None:  # a whole window from position 0
            a = window_attention(q, k, v, self.attn_func, self.block_ctx, self.n_ctx)
        else:
            a = cache.attend(q, k, v, positions)
        a = a.transpose(1, 2).reshape(B, L, self.n_state)  # merge heads
        return self.c_proj(a)


class MLP(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        hidden = int(cfg.m_mlp * cfg.width)
        self.c_fc = Conv1D(cfg.width, hidden, cfg.init_scale)
        self.c_proj = Conv1D(hidden, cfg.width, cfg.init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))  # quick-GELU


class ResAttnBlock(nn.Module):
    """x + a + m with a = attn(ln_0(x)), m = mlp(ln_1(x + a)): OpenAI's block (no final layer norm)."""

    def __init__(self, cfg: PriorConfig, attn_func: int):
        super().__init__()
        self.attn = FactorizedAttention(cfg, attn_func)
        self.ln_0 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)
        self.ln_1 = nn.LayerNorm(cfg.width)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache=None) -> torch.Tensor:
        a = self.attn(self.ln_0(x), positions, cache)
        m = self.mlp(self.ln_1(x + a))
        return x + a + m


class Transformer(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self._attn_mods = nn.ModuleList(
            ResAttnBlock(cfg, attn_func_for_layer(cfg.attn_order, d)) for d in range(cfg.depth)
        )
        self.checkpoint_layers = cfg.checkpoint_layers

    def forward(self, x: torch.Tensor, positions: torch.Tensor, caches=None) -> torch.Tensor:
        recompute = self.checkpoint_layers and caches is None and torch.is_grad_enabled()
        for i, block in enumerate(self._attn_mods):
            if recompute:  # keep only each layer's input; its insides are recomputed in backward
                x = torch.utils.checkpoint.checkpoint(block, x, positions, use_reentrant=False)
            else:
                x = block(x, positions, None if caches is None else caches[i])
        return x
