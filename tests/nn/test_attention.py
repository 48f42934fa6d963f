"""Factorized attention masks and kernels, checked against definitions written out by hand."""

import math

import pytest
import torch

from jukebox_lite.nn.attention import (
    ATTN_FUNCS,
    attention_kernel,
    attn_func_for_layer,
    blocked_attention,
    dense_mask,
    flex_attention_window,
    flex_mask_mod,
    sdpa_attention,
    uses_null_key,
    window_attention,
)

SHAPES = [(16, 4), (24, 6), (32, 2)]  # (n_ctx, blocks)


def brute_force_keys(attn_func: int, q: int, n_ctx: int, blocks: int) -> set:
    """The keys a query sees, listed the slow way; 'null' is the all-zero key."""
    row_len = n_ctx // blocks
    row, col = divmod(q, row_len)
    if attn_func == 0:
        return set(range(q + 1))
    if attn_func == 1:
        return {row * row_len + c for c in range(col + 1)}
    if attn_func == 2:
        return {r * row_len + col for r in range(row + 1)}
    if attn_func == 3:
        return {"null"} if row == 0 else {(row - 1) * row_len + c for c in range(row_len)}
    if attn_func == 4:  # OpenAI's summaries: ends of rows 0..blocks-2 up to and including q
        ends = [r * row_len + row_len - 1 for r in range(blocks - 1)]
        return {"null"} | {e for e in ends if e <= q}
    raise AssertionError


@pytest.mark.parametrize("n_ctx,blocks", SHAPES)
@pytest.mark.parametrize("attn_func", ATTN_FUNCS)
def test_dense_mask_matches_brute_force(attn_func, n_ctx, blocks):
    mask = dense_mask(attn_func, n_ctx, n_ctx // blocks, n_ctx)
    keys = (["null"] if uses_null_key(attn_func) else []) + list(range(n_ctx))
    assert mask.shape == (n_ctx, len(keys))
    for q in range(n_ctx):
        seen = {keys[i] for i in torch.nonzero(mask[q]).flatten().tolist()}
        assert seen == brute_force_keys(attn_func, q, n_ctx, blocks), (attn_func, q)


def test_attn_orders_cycle_like_openai():
    assert [attn_func_for_layer(0, d) for d in range(3)] == [0, 0, 0]
    assert [attn_func_for_layer(1, d) for d in range(4)] == [1, 2, 1, 2]
    assert [attn_func_for_layer(2, d) for d in range(6)] == [1, 2, 3, 1, 2, 3]
    assert [attn_func_for_layer(3, d) for d in range(4)] == [1, 4, 1, 4]


@pytest.mark.parametrize("attn_func", ATTN_FUNCS)
def test_flex_mask_mod_equals_boolean_mask(attn_func):
    n_ctx, blocks = 32, 4
    expected = dense_mask(attn_func, n_ctx, n_ctx // blocks, n_ctx)
    q_idx = torch.arange(expected.shape[0])[:, None]
    kv_idx = torch.arange(expected.shape[1])[None, :]
    got = flex_mask_mod(attn_func, n_ctx // blocks, n_ctx)(0, 0, q_idx, kv_idx)
    assert torch.equal(got, expected)


def naive_attention(q, k, v, mask):
    """softmax(q·kᵀ/√d + mask) v, with the null key (zeros) prepended when the mask has one more column."""
    if mask.shape[1] == k.shape[2] + 1:
        k = torch.cat([torch.zeros_like(k[:, :, :1]), k], 2)
        v = torch.cat([torch.zeros_like(v[:, :, :1]), v], 2)
    w = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    w = w.masked_fill(~mask, float("-inf")).softmax(-1)
    return w @ v


@pytest.mark.parametrize("kernel", ["masked", "blocked"])
@pytest.mark.parametrize("attn_func", ATTN_FUNCS)
def test_window_kernels_equal_naive_attention(attn_func, kernel):
    g = torch.Generator().manual_seed(attn_func)
    n_ctx, blocks = 24, 6
    q, k, v = (torch.randn(2, 3, n_ctx, 8, generator=g) for _ in range(3))
    expected = naive_attention(q, k, v, dense_mask(attn_func, n_ctx, n_ctx // blocks, n_ctx))
    with attention_kernel(kernel):
        got = window_attention(q, k, v, attn_func, n_ctx // blocks, n_ctx)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [32, 29, 8, 5])
@pytest.mark.parametrize("attn_func", ATTN_FUNCS)
def test_blocked_kernel_equals_masked_in_value_and_gradient(attn_func, length):
    """Windows shorter than n_ctx and not a whole number of rows too (the blocked kernel pads the last row)."""
    g = torch.Generator().manual_seed(10 + attn_func)
    n_ctx, block_ctx = 32, 8
    inputs = [torch.randn(2, 2, length, 8, generator=g, requires_grad=True) for _ in range(3)]
    weights = torch.randn(2, 2, length, 8, generator=g)
    pos = torch.arange(length)
    masked = sdpa_attention(*inputs, pos, pos, attn_func, block_ctx, n_ctx)
    expected_grads = torch.autograd.grad((masked * weights).sum(), inputs)
    blocked = blocked_attention(*inputs, attn_func, block_ctx, n_ctx)
    grads = torch.autograd.grad((blocked * weights).sum(), inputs)
    torch.testing.assert_close(blocked, masked, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, expected_grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_attention_kernel_is_restored_and_checked():
    q = k = v = torch.randn(1, 1, 16, 4)
    with attention_kernel("masked"):
        with pytest.raises(ValueError, match="not one of"):
            with attention_kernel("dense"):
                pass
        masked = window_attention(q, k, v, 2, 4, 16)
    assert torch.equal(masked, sdpa_attention(q, k, v, torch.arange(16), torch.arange(16), 2, 4, 16))


def test_previous_row_attention_of_first_row_is_zero():
    """OpenAI attends row 0 to a zero-padded row: the output there is exactly zero."""
    q, k, v = (torch.randn(1, 1, 16, 4) for _ in range(3))
    out = window_attention(q, k, v, 3, 4, 16)
    assert torch.equal(out[:, :, :4], torch.zeros(1, 1, 4, 4))
    assert out[:, :, 4:].abs().sum() > 0


def test_explicit_positions_match_window():
    """Attention at a subset of query positions with all keys equals the same rows of the full window."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, 8, generator=g) for _ in range(3))
    pos = torch.arange(32)
    for attn_func in ATTN_FUNCS:
        full = window_attention(q, k, v, attn_func, 8, 32)
        part = sdpa_attention(q[:, :, 20:27], k, v, pos[20:27], pos, attn_func, 8, 32)
        torch.testing.assert_close(part, full[:, :, 20:27], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("attn_func", ATTN_FUNCS)
def test_flex_attention_runs_on_cpu_and_equals_sdpa(attn_func):
    """torch 2.13's eager FlexAttention runs on CPU: same outputs as the SDPA path."""
    g = torch.Generator().manual_seed(1)
    n_ctx, blocks = 256, 8
    q, k, v = (torch.randn(1, 2, n_ctx, 16, generator=g) for _ in range(3))
    expected = window_attention(q, k, v, attn_func, n_ctx // blocks, n_ctx)
    got = flex_attention_window(q, k, v, attn_func, n_ctx // blocks, n_ctx, compiled=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
