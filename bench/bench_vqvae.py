"""Benchmark the VQ-VAE at OpenAI's released settings (44.1 kHz, hops 8/32/128, 2048 codes).

Measures three variants of the same model and weights:
  eager          plain 1-D convolutions in float32 (`vqvae.channels_last: false`), the baseline
  channels-last  the stages' default: every convolution run as a (1, k) 2-D one on channels-last
                 (B, C, 1, T) tensors (`jukebox_lite.nn.conv`), float32
  +bf16          channels-last under bf16 autocast (training with `train.precision: bf16`; the
                 default on CUDA)
and for each:
  train   samples per second of one step (forward + backward + Adam step) on batch × window samples
  encode  audio seconds per wall second (× real time), all three levels
  decode  the same, each level's codes decoded to audio (the three decodes together)
The variants' codes and audio are compared with eager's (fraction of equal codes, max |difference|);
the model is untrained, so its codes have near-ties that rounding flips more often than a trained one's.

    python bench/bench_vqvae.py                  # CPU (and CUDA when present), prints a table
    python bench/bench_vqvae.py --device cpu --train-samples 16384 --audio-seconds 2

Results go to bench/results/vqvae-<host>-<time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from jukebox_lite.core.config import VQVAEConfig
from jukebox_lite.models.vqvae import VQVAE

from results_file import machine_line, write_results  # bench/ is on sys.path when a script here runs

VARIANTS = {  # name: (channels_last, bf16)
    "eager": (False, False),
    "channels-last": (True, False),
    "channels-last+bf16": (True, True),
}


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
    cfg = VQVAEConfig(sample_length=args.train_samples, channels_last=False)  # released settings but the window
    eager = VQVAE(cfg).to(device)
    train_x = bench_audio(args.batch, args.train_samples, device)
    eager.train()
    eager(train_x)  # initialise the codebooks from data, as the first training step does
    models = {}
    for name, (channels_last, _) in VARIANTS.items():
        models[name] = VQVAE(dataclasses.replace(cfg, channels_last=channels_last)).to(device)
        models[name].load_state_dict(eager.state_dict())
    audio_len = round(args.audio_seconds * 44100) // 128 * 128
    infer_x = bench_audio(1, audio_len, device, seed=1)

    def autocast(name):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=VARIANTS[name][1])

    def encode(name):
        with autocast(name):
            return models[name].encode(infer_x)

    def decode(name, codes):
        with autocast(name):
            return [models[name].decode(codes, level) for level in range(3)]

    # every variant computes the same function, up to rounding: compare each with eager before training
    for model in models.values():
        model.eval()
    ref_codes, ref_audio = encode("eager"), decode("eager", encode("eager"))
    agreement = {name: [float((a == b).float().mean()) for a, b in zip(ref_codes, encode(name))] for name in models}
    audio_diff = {
        name: max(float((a - b).abs().max()) for a, b in zip(ref_audio, decode(name, ref_codes))) for name in models
    }

    encode_s = timed_pair({n: (lambda n=n: encode(n)) for n in models}, device, args.warmup, args.repeats)
    decode_s = timed_pair({n: (lambda n=n: decode(n, ref_codes)) for n in models}, device, args.warmup, args.repeats)

    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-4) for name, model in models.items()}

    def train_step(name):
        with autocast(name):
            _, metrics = models[name](train_x)
        optimizers[name].zero_grad(set_to_none=True)
        metrics["loss"].backward()
        optimizers[name].step()

    for model in models.values():
        model.train()
    step_s = timed_pair({n: (lambda n=n: train_step(n)) for n in models}, device, args.warmup, args.repeats)
    return [
        {
            "device": device.type,
            "variant": name,
            "train_samples_per_s": args.batch * args.train_samples / step_s[name],
            "train_step_s": step_s[name],
            "encode_x_realtime": audio_len / 44100 / encode_s[name],
            "decode_x_realtime": audio_len / 44100 / decode_s[name],
            "code_agreement": agreement[name],
            "decode_max_abs_diff": audio_diff[name],
        }
        for name in models
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="all: CPU, and CUDA when present")
    parser.add_argument("--batch", type=int, default=1, help="training batch")
    parser.add_argument("--train-samples", type=int, default=32768, help="training window (multiple of 128)")
    parser.add_argument("--audio-seconds", type=float, default=4.0, help="audio encoded and decoded per timing")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
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
    print(machine_line())
    print(f"{'device':6} {'variant':18} {'train samples/s':>16} {'encode ×RT':>11} {'decode ×RT':>11}  "
          f"{'codes = eager (per level)':26} {'audio max |diff|':>16}")
    for row in rows:
        base = next(r for r in rows if r["device"] == row["device"] and r["variant"] == "eager")
        row["speedup"] = {key: row[key] / base[key] for key in ("train_samples_per_s", "encode_x_realtime", "decode_x_realtime")}
        speed = {key: f"{row[key]:.0f}" if key.startswith("train") else f"{row[key]:.2f}" for key in row["speedup"]}
        speed = {key: f"{value} ({row['speedup'][key]:.2f}×)" for key, value in speed.items()}
        print(f"{row['device']:6} {row['variant']:18} {speed['train_samples_per_s']:>16} {speed['encode_x_realtime']:>11} "
              f"{speed['decode_x_realtime']:>11}  {', '.join(f'{a:.4f}' for a in row['code_agreement']):26} "
              f"{row['decode_max_abs_diff']:16.1e}")
    write_results("vqvae", {"settings": vars(args), "results": rows})


if __name__ == "__main__":
    main()
