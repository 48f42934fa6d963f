"""Factorized (sparse) attention of Jukebox's priors: which key each query may see, and the kernels.

A window of `n_ctx` tokens is seen as `blocks` rows of `block_ctx = n_ctx // blocks` tokens. Each
layer attends with one pattern (`attn_func`), and `attn_order` cycles the patterns over the layers:

    0  dense causal: every earlier position and itself
    1  row: earlier positions of the query's own row, and itself
    2  column: the same offset in every earlier row, and itself
    3  previous row: the whole row before the query's row
    4  summary: the last position of each row up to the query
    7  prime (OpenAI's 1b_lyrics, whose window is [lyric characters, codes]): every earlier position
       among the first `prime_keys` (the lyric prefix rounded up as OpenAI rounds it); attn_order 12
       puts it on every 16th layer

Patterns 3 and 4 also see a *null key* (key and value all zeros) at position -1. OpenAI's code gets
it by zero-padding: row 0 has no previous row, so pattern 3 attends to a row of zeros (and returns
exactly zero), and pattern 4 always has one zero slot in front of the row ends. Keeping it makes our
outputs equal theirs. Exactly as in their training forward, pattern 4 lets a row end see itself,
except the window's very last position (their summaries cover rows 0..blocks-2).

Everything is written with explicit query and key positions, so one rule (`allowed`) drives the
masked reference path, the FlexAttention block masks used on CUDA, and the KV cache during
sampling, where the cached keys are a sparse subset of the past. Off CUDA, training windows run the
blocked kernel, which reshapes rows and columns into small attentions and needs no mask; tests hold
every kernel equal to the masked reference.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F


ATTN_FUNCS = (0, 1, 2, 3, 4)
PRIME = 7  # the lyric-prefix pattern: its own kernel (`prime_attention`) and cache slots
# attn_order → the cycle of attn_func over layers, as in OpenAI's Transformer (12: see attn_func_for_layer).
ATTN_ORDERS = {0: (0,), 1: (1, 2), 2: (1, 2, 3), 3: (1, 4), 12: (1, 2, 3)}
NULL_POSITION = -1  # the position of the all-zero key of patterns 3 and 4
EMPTY_POSITION = 1 << 40  # position recorded in an unused cache slot: no query may see it


def attn_func_for_layer(attn_order: int, layer: int) -> int:
    cycle = ATTN_ORDERS[attn_order]
    if attn_order == 12 and layer % 16 == 15:  # the lyrics layout: every 16th layer reads the prefix, or is dense
        return (PRIME, PRIME, 0)[layer % 3]
    return cycle[layer % len(cycle)]


def prime_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_ctx: int, n_ctx: int, prime_keys: int
) -> torch.Tensor:
    """Pattern 7 over a teacher-forced window: only the first `prime_keys` keys are read (the rest of the
    window is masked for every query). q, k, v: (B, H, T, D) → (B, H, T, D)."""
    keys = min(prime_keys, k.shape[2])
    q_pos = torch.arange(q.shape[2], device=q.device)
    return sdpa_attention(q, k[:, :, :keys], v[:, :, :keys], q_pos, q_pos[:keys], PRIME, block_ctx, n_ctx, prime_keys)


def uses_null_key(attn_func: int) -> bool:
    return attn_func in (3, 4)


def allowed(
    attn_func: int, q: torch.Tensor, k: torch.Tensor, block_ctx: int, n_ctx: int, prime_keys: int = 0
) -> torch.Tensor:
    """True where the query at position `q` may attend to the key at position `k` (broadcasting).

    Positions are window positions (0..n_ctx-1); `k == NULL_POSITION` is the null key; `prime_keys`:
    pattern 7's keys.
    """
    real = (k >= 0) & (k <= q)
    if attn_func == 0:
        return real
    if attn_func == PRIME:
        return real & (k < prime_keys)
    if attn_func == 1:
        return real & (k // block_ctx == q // block_ctx)
    if attn_func == 2:
        return real & (k % block_ctx == q % block_ctx)
    if attn_func == 3:
        previous_row = (k >= 0) & (k // block_ctx == q // block_ctx - 1)
        return previous_row | ((k == NULL_POSITION) & (q < block_ctx))
    if attn_func == 4:
        row_end = real & (k % block_ctx == block_ctx - 1) & (k < n_ctx - 1)
        return row_end | (k == NULL_POSITION)
    raise ValueError(f"attn_func {attn_func} is not one of {(*ATTN_FUNCS, PRIME)}")


def dense_mask(attn_func: int, length: int, block_ctx: int, n_ctx: int) -> torch.Tensor:
    """(length, length + null) bool mask for a teacher-forced window; the null key, if any, comes first."""
    q = torch.arange(length)
    k = torch.arange(length)
    if uses_null_key(attn_func):
        k = torch.cat([torch.tensor([NULL_POSITION]), k])
    return allowed(attn_func, q[:, None], k[None, :], block_ctx, n_ctx)


def with_null_key(
    k: torch.Tensor, v: torch.Tensor, k_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prepend the all-zero key/value at NULL_POSITION. k, v: (B, H, L, D) → (B, H, L+1, D)."""
    zero = k.new_zeros(*k.shape[:2], 1, k.shape[3])
    null = torch.full((1,), NULL_POSITION, dtype=k_pos.dtype, device=k_pos.device)
    return torch.cat([zero, k], 2), torch.cat([zero, v], 2), torch.cat([null, k_pos])


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    attn_func: int,
    block_ctx: int,
    n_ctx: int,
    prime_keys: int = 0,
) -> torch.Tensor:
    """Masked attention at explicit positions; works for full windows and for KV-cache steps alike.

    q: (B, H, Tq, D), k/v: (B, H, Tk, D), q_pos: (Tq,), k_pos: (Tk,) → (B, H, Tq, D). The null key is
    added here for patterns that use it. Every query sees at least one key, so no row is all-masked.
    """
    if uses_null_key(attn_func):
        k, v, k_pos = with_null_key(k, v, k_pos)
    mask = allowed(attn_func, q_pos[:, None], k_pos[None, :], block_ctx, n_ctx, prime_keys)  # (Tq, Tk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def flex_mask_mod(attn_func: int, block_ctx: int, n_ctx: int):
    """FlexAttention mask_mod for a teacher-forced window whose keys are [null?, 0..T-1]."""
    shift = 1 if uses_null_key(attn_func) else 0

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(attn_func, q_idx, kv_idx - shift, block_ctx, n_ctx)

    return mask_mod


@functools.lru_cache(maxsize=64)
def _flex_block_mask(attn_func: int, length: int, block_ctx: int, n_ctx: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    kv_len = length + (1 if uses_null_key(attn_func) else 0)
    return create_block_mask(flex_mask_mod(attn_func, block_ctx, n_ctx), None, None, length, kv_len, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention_window(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_func: int, block_ctx: int, n_ctx: int, compiled: bool = True
) -> torch.Tensor:
    """Teacher-forced window with FlexAttention: blocks that the pattern masks out are skipped.

    q/k/v: (B, H, T, D) at positions 0..T-1 → (B, H, T, D). `compiled=False` runs the eager reference
    (slow, but it runs on CPU, which the tests use to check it against the SDPA path).
    """
    from torch.nn.attention.flex_attention import flex_attention

    length = q.shape[2]
    if uses_null_key(attn_func):
        pos = torch.arange(length, device=q.device)
        k, v, _ = with_null_key(k, v, pos)
    block_mask = _flex_block_mask(attn_func, length, block_ctx, n_ctx, str(q.device))
    kernel = _compiled_flex_attention() if compiled else flex_attention
    return kernel(q, k, v, block_mask=block_mask)


def blocked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_func: int, block_ctx: int, n_ctx: int
) -> torch.Tensor:
    """A teacher-forced window that computes only the blocks its pattern attends to (OpenAI's layout).

    q/k/v: (B, H, T, D) at positions 0..T-1 → (B, H, T, D). The window is cut into rows of block_ctx
    (zero-padded at the end, which no real query sees) and each pattern becomes one plain or causal
    attention over small blocks: row = causal within each row, column = causal down each column,
    previous row = each row over the row before it, summary = every query over the row ends only.
    Equal to the masked `sdpa_attention`, at a fraction of its work when rows are many.
    """
    if attn_func == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    B, H, T, D = q.shape
    if attn_func == 4:  # keys: the row ends only (the null key and the mask are sdpa_attention's)
        ends = torch.arange(T // block_ctx, device=q.device) * block_ctx + block_ctx - 1
        return sdpa_attention(q, k[:, :, ends], v[:, :, ends], torch.arange(T, device=q.device), ends, 4, block_ctx, n_ctx)
    pad = -T % block_ctx
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    rows = (T + pad) // block_ctx
    # (B, H, rows·bc, D) → (B·H, rows, bc, D)
    q, k, v = (t.reshape(B * H, rows, block_ctx, D) for t in (q, k, v))
    if attn_func == 1:  # causal within each row
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif attn_func == 2:  # causal down each column: (B·H, bc, rows, D)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    elif attn_func == 3:  # row r over the whole row r-1; row 0 sees only the null key, whose value is 0
        later = F.scaled_dot_product_attention(q[:, 1:], k[:, :-1], v[:, :-1])
        out = torch.cat([torch.zeros_like(q[:, :1]), later], dim=1)
    else:
        raise ValueError(f"attn_func {attn_func} is not one of {ATTN_FUNCS}")
    return out.reshape(B, H, rows * block_ctx, D)[:, :, :T]


KERNELS = ("auto", "blocked", "masked", "flex")
_kernel = "auto"


@contextlib.contextmanager
def attention_kernel(name: str):
    """Use one kernel for teacher-forced windows inside the block ("auto": flex on CUDA, else blocked).

    For benchmarks that compare the kernels and tests that check them against each other; the stages
    always run "auto".
    """
    global _kernel
    if name not in KERNELS:
        raise ValueError(f"attention kernel {name!r} is not one of {KERNELS}")
    previous, _kernel = _kernel, name
    try:
        yield
    finally:
        _kernel = previous


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_func: int, block_ctx: int, n_ctx: int
) -> torch.Tensor:
    """A whole teacher-forced window (positions 0..T-1) with the kernel in use (see `attention_kernel`)."""
    kernel = _kernel if _kernel != "auto" else ("flex" if q.is_cuda else "blocked")
    if kernel == "flex":
        return flex_attention_window(q, k, v, attn_func, block_ctx, n_ctx, compiled=q.is_cuda)
    if kernel == "blocked":
        return blocked_attention(q, k, v, attn_func, block_ctx, n_ctx)
    pos = torch.arange(q.shape[2], device=q.device)
    return sdpa_attention(q, k, v, pos, pos, attn_func, block_ctx, n_ctx)


# ----------------------------------------------------------------------------------------------
# The per-layer KV cache of incremental sampling


class LayerCache:
    """Keys and values of one layer that later queries can still attend to (batched, allocated once).

    Slots, by pattern (r = t // block_ctx is the row of position t, c = t % block_ctx its column):

        0 dense          slot t                  a step at t reads slots [0, t]
        1 row            slot c                  reads [0, c]: the current row so far
        2 column         slot c·blocks + r       reads [c·blocks, c·blocks + r]: the column so far
        3 previous row   slot t mod 2·block_ctx  reads the other half: row r-1 (row 0: the null key only)
        4 row ends       slot r + 1              reads [0, n]: slot 0 is the null key, then the n row ends seen

    `step` (one position: every sampled token) writes its key first and then attends over one
    contiguous slice, with no mask and no copy. `attend` (any number of positions: a prime, a window's
    context) attends over every slot with the mask of `allowed`, which is why each slot's position is
    remembered (`positions`, a list: a step writes it without a tensor operation); it is also the
    reference the tests and bench/bench_prior.py hold the steps against.
    """

    def __init__(self, attn_func: int, n_ctx: int, block_ctx: int, prime_keys: int = 0):
        """n_ctx: the window's positions (a lyrics prior's prefix included); prime_keys: pattern 7's keys."""
        self.attn_func, self.n_ctx, self.block_ctx, self.prime_keys = attn_func, n_ctx, block_ctx, prime_keys
        self.blocks = n_ctx // block_ctx
        self.capacity = {0: n_ctx, 1: block_ctx, 2: n_ctx, 3: 2 * block_ctx, 4: self.blocks + 1, PRIME: prime_keys}[attn_func]
        self.k = self.v = None
        self.positions = [EMPTY_POSITION] * self.capacity  # of each slot
        if attn_func == 4:
            self.positions[0] = NULL_POSITION  # the null key: zeros, always seen

    def _slots(self, pos: torch.Tensor | int):
        f, bc = self.attn_func, self.block_ctx
        if f in (0, PRIME):
            return pos
        if f == 1:
            return pos % bc
        if f == 2:
            return (pos % bc) * self.blocks + pos // bc
        if f == 3:
            return pos % (2 * bc)
        return pos // bc + 1

    def _allocate(self, k: torch.Tensor) -> None:
        B, H, _, D = k.shape
        self.k = k.new_zeros(B, H, self.capacity, D)
        self.v = k.new_zeros(B, H, self.capacity, D)

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
        """q/k/v (B, H, 1, D) of position t → attention output (B, H, 1, D); caches k, v."""
        if self.k is None:
            self._allocate(k)
        f, bc = self.attn_func, self.block_ctx
        r, c = divmod(t, bc)
        if (f != 4 or c == bc - 1) and (f != PRIME or t < self.prime_keys):  # 4 keeps row ends, 7 the first keys
            slot = self._slots(t)
            self.k.narrow(2, slot, 1).copy_(k)
            self.v.narrow(2, slot, 1).copy_(v)
            self.positions[slot] = t
        if f == 0:
            first, count = 0, t + 1
        elif f == PRIME:
            first, count = 0, min(t + 1, self.prime_keys)
        elif f == 1:
            first, count = 0, c + 1
        elif f == 2:
            first, count = c * self.blocks, r + 1
        elif f == 3:
            if r == 0:
                return torch.zeros_like(q)  # softmax over the null key alone, whose value is zero
            first, count = (r - 1) % 2 * bc, bc
        else:  # the null key and the row ends up to t; the window's last position is never a summary
            first, count = 0, 1 + (t + 1) // bc - (t == self.n_ctx - 1)
        return F.scaled_dot_product_attention(q, self.k.narrow(2, first, count), self.v.narrow(2, first, count))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        """q/k/v (B, H, L, D) of positions start..start+L-1 → attention output (B, H, L, D); caches k, v."""
        if self.k is None:
            self._allocate(k)
        q_pos = torch.arange(start, start + q.shape[2], device=q.device)
        held = slice(1, None) if self.attn_func == 4 else slice(None)  # sdpa_attention adds the null key itself
        held_pos = torch.tensor(self.positions[held], device=q.device)
        out = sdpa_attention(
            q, torch.cat([self.k[:, :, held], k], 2), torch.cat([self.v[:, :, held], v], 2), q_pos,
            torch.cat([held_pos, q_pos]), self.attn_func, self.block_ctx, self.n_ctx, self.prime_keys,
        )
        keep = self._worth_keeping(q_pos, start + q.shape[2])
        slots = self._slots(q_pos[keep])
        self.k[:, :, slots] = k[:, :, keep].to(self.k.dtype)
        self.v[:, :, slots] = v[:, :, keep].to(self.v.dtype)
        for slot, position in zip(slots.tolist(), q_pos[keep].tolist()):
            self.positions[slot] = position
        return out

    def _worth_keeping(self, pos: torch.Tensor, next_pos: int) -> torch.Tensor:
        """Which of the new positions a query at `next_pos` or later may still see."""
        f, bc = self.attn_func, self.block_ctx
        if f == PRIME:
            return pos < self.prime_keys
        if f in (0, 2):
            return torch.ones_like(pos, dtype=torch.bool)
        if f == 1:
            return pos // bc == next_pos // bc
        if f == 3:
            return pos // bc >= next_pos // bc - 1
        return pos % bc == bc - 1
