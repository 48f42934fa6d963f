"""Benchmark the VQ-VAE at OpenAI's released settings (44.1 kHz, hops 8/32/128, 2048 codes).

Measures, for an eager baseline and for the fastest variant of the same model and weights:
  train   samples per second of one step (forward + backward + Adam step) on batch × window samples
  encode  audio seconds per wall second (× real time), all three levels
  decode  the same, each level's codes decoded to audio (the three decodes together)

The fast variant runs every Conv1d / ConvTranspose1d of the encoders and decoders as the equivalent
Conv2d / ConvTranspose2d with a (1, k) kernel on channels-last (batch, channels, 1, time) tensors,
which oneDNN runs far faster than its 1-D transposed convolution on CPU; encode/decode run under
inference_mode; on CUDA it adds bf16 autocast and, with --compile, torch.compile. The fast model's
outputs are checked against the eager one (max abs difference is reported).

    python bench/bench_vqvae.py                  # CPU (and CUDA when present), prints a table
    python bench/bench_vqvae.py --device cpu --train-samples 16384 --audio-seconds 2

Results go to bench/results/vqvae-<host>-<time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn as nn

from jukebox_lite.config import VQVAEConfig
from jukebox_lite.vqvae import VQVAE

from results_file import write_results  # bench/ is on sys.path when a script here runs



# ----------------------------------------------------------------------------------------------
# The fast variant: the same weights run as 2-D convolutions on channels-last tensors


def conv2d_from(conv: nn.Conv1d | nn.ConvTranspose1d) -> nn.Module:
    """An equivalent 2-D convolution with a (1, k) kernel, sharing nothing with the original."""
    kind = nn.ConvTranspose2d if isinstance(conv, nn.ConvTranspose1d) else nn.Conv2d
    out = kind(
        conv.in_channels,
        conv.out_channels,
        (1, conv.kernel_size[0]),
        stride=(1, conv.stride[0]),
        padding=(0, conv.padding[0]),
        dilation=(1, conv.dilation[0]),
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        out.weight.copy_(conv.weight[:, :, None])  # (out, in, k) → (out, in, 1, k)
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out.to(memory_format=torch.channels_last)


def swap_convs(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):
            setattr(module, name, conv2d_from(child))
        else:
            swap_convs(child)


class ChannelsLast2d(nn.Module):
    """Runs a conv stack built for (B, C, T) on (B, C, 1, T) channels-last; (B, C, T) in and out."""

    def __init__(self, stack: nn.Module):
        super().__init__()
        self.stack = copy.deepcopy(stack)
        swap_convs(self.stack)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stack(x[:, :, None].contiguous(memory_format=torch.channels_last))
        return y[:, :, 0]  # (B, C, T'), strided: the bottleneck's transpose then reads it contiguously


def fast_model(model: VQVAE, compile_stacks: bool) -> VQVAE:
    fast = copy.deepcopy(model)
    for stacks in (fast.encoders, fast.decoders):
        for level in range(len(stacks)):
            stack = ChannelsLast2d(stacks[level])
            stacks[level] = torch.compile(stack) if compile_stacks else stack
    return fast


# ----------------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_pair(fns: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Best wall time of each function, calls interleaved: on a machine shared with other jobs the
    variants then see the same load, and the minimum is the least disturbed measurement."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def bench_audio(batch: int, length: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Tones plus noise bursts, (batch, 1, length) in [-1, 1]: enough structure to use many codes."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 44100
    freqs = 80 + 3000 * torch.rand(batch, 3, 1, generator=gen)
    tone = (0.2 * torch.sin(2 * torch.pi * freqs * t)).sum(dim=1)
    bursts = 0.2 * torch.randn(batch, length, generator=gen) * torch.exp(-(t % 0.25) * 30)
    return (tone + bursts).clamp(-1, 1)[:, None].to(device)


def bench_device(args: argparse.Namespace, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    cfg = VQVAEConfig(sample_length=args.train_samples)  # released settings; only the window differs
    eager = VQVAE(cfg).to(device)
    train_x = bench_audio(args.batch, args.train_samples, device)
    eager.train()
    eager(train_x)  # initialise the codebooks from data, as the first training step does
    audio_len = round(args.audio_seconds * 44100) // 128 * 128
    infer_x = bench_audio(1, audio_len, device, seed=1)
    use_bf16 = device.type == "cuda" or args.cpu_bf16
    compile_fast = args.compile if args.compile is not None else device.type == "cuda"
    models = {"eager": eager, "fast": fast_model(eager, compile_fast).to(device)}
    eager, fast = models["eager"], models["fast"]

    # the fast model computes the same function, up to rounding: compare it, as it runs, with eager
    # before either is trained further (codes: fraction equal; audio: max |difference|)
    eager.eval(), fast.eval()
    fast_autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    with torch.no_grad():
        ref_codes = eager.encode(infer_x)
        with fast_autocast:
            fast_codes = fast.encode(infer_x)
            fast_audio = [fast.decode(ref_codes, L) for L in range(3)]
        agreement = [float((a == b).float().mean()) for a, b in zip(ref_codes, fast_codes)]
        decode_diff = max(float((eager.decode(ref_codes, L) - fast_audio[L]).abs().max()) for L in range(3))

    def autocast(name):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16 and name == "fast")

    def train_step(name):
        model, optimizer = models[name], optimizers[name]
        with autocast(name):
            _, metrics = model(train_x)
        optimizer.zero_grad(set_to_none=True)
        metrics["loss"].backward()
        optimizer.step()

    def encode(name):
        with (torch.inference_mode if name == "fast" else torch.no_grad)(), autocast(name):
            return models[name].encode(infer_x)

    def decode(name):
        with (torch.inference_mode if name == "fast" else torch.no_grad)(), autocast(name):
            return [models[name].decode(ref_codes, level) for level in range(3)]

    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-4) for name, model in models.items()}
    for model in models.values():
        model.eval()
    encode_s = timed_pair({n: (lambda n=n: encode(n)) for n in models}, device, args.warmup, args.repeats)
    decode_s = timed_pair({n: (lambda n=n: decode(n)) for n in models}, device, args.warmup, args.repeats)
    for model in models.values():
        model.train()
    step_s = timed_pair({n: (lambda n=n: train_step(n)) for n in models}, device, args.warmup, args.repeats)
    rows = []
    for name in models:
        rows.append({
            "device": device.type,
            "variant": name,
            "precision": "bf16 autocast" if use_bf16 and name == "fast" else "float32",
            "compiled": bool(compile_fast and name == "fast"),
            "train_samples_per_s": args.batch * args.train_samples / step_s[name],
            "train_step_s": step_s[name],
            "encode_x_realtime": audio_len / 44100 / encode_s[name],
            "decode_x_realtime": audio_len / 44100 / decode_s[name],
        })
    rows[1]["code_agreement"] = agreement
    rows[1]["decode_max_abs_diff"] = decode_diff
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="all: CPU, and CUDA when present")
    parser.add_argument("--batch", type=int, default=1, help="training batch")
    parser.add_argument("--train-samples", type=int, default=32768, help="training window (multiple of 128)")
    parser.add_argument("--audio-seconds", type=float, default=4.0, help="audio encoded and decoded per timing")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu-bf16", action="store_true", help="also give the fast variant bf16 autocast on CPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the fast variant's conv stacks (default: on for CUDA only)")
    args = parser.parse_args()
    if args.train_samples % 128 or args.train_samples < 2048:
        parser.error("--train-samples must be a multiple of 128 and at least 2048 (linf_k)")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda" and not devices:
        parser.error("no CUDA device is visible")

    rows = [row for device in devices for row in bench_device(args, device)]
    header = f"{'device':6} {'variant':7} {'precision':13} {'train samples/s':>16} {'encode ×RT':>11} {'decode ×RT':>11}"
    print(header)
    for row in rows:
        print(f"{row['device']:6} {row['variant']:7} {row['precision']:13} {row['train_samples_per_s']:16.0f} "
              f"{row['encode_x_realtime']:11.2f} {row['decode_x_realtime']:11.2f}")
    speedups = {}
    for device in devices:
        base, fast = (r for r in rows if r["device"] == device.type)
        speedups[device.type] = {
            key: fast[key] / base[key] for key in ("train_samples_per_s", "encode_x_realtime", "decode_x_realtime")
        }
        print(f"{device.type}: speed-up train {speedups[device.type]['train_samples_per_s']:.2f}×, "
              f"encode {speedups[device.type]['encode_x_realtime']:.2f}×, "
              f"decode {speedups[device.type]['decode_x_realtime']:.2f}×; fast codes agree "
              f"{', '.join(f'{a:.4f}' for a in fast['code_agreement'])}, decode max |diff| {fast['decode_max_abs_diff']:.2e}")
    write_results("vqvae", {"settings": vars(args), "results": rows, "speedups": speedups})


if __name__ == "__main__":
    main()
