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

Results go to bench/results/vqvae-<host>-<time>.json (git-ignored; --out to change the folder), one
row per device and variant (layout: bench/common.py).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from jukebox_lite.core.config import VQVAEConfig
from jukebox_lite.models.vqvae import VQVAE

# bench/ is on sys.path when a script here runs
from common import add_common_arguments, apply_threads, devices, machine_line, wall_times, write_results

VARIANTS = {  # name: (channels_last, bf16)
    "eager": (False, False),
    "channels-last": (True, False),
    "channels-last+bf16": (True, True),
}
SPEEDUP_FIGURES = ("train_samples_per_s", "encode_x_realtime", "decode_x_realtime")  # each also given ÷ eager's


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

    # the variants' calls interleave, and each keeps its best time: the least disturbed one
    encode_times = wall_times({n: (lambda n=n: encode(n)) for n in models}, device, args.warmup, args.repeats)
    decode_times = wall_times({n: (lambda n=n: decode(n, ref_codes)) for n in models}, device, args.warmup, args.repeats)

    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-4) for name, model in models.items()}

    def train_step(name):
        with autocast(name):
            _, metrics = models[name](train_x)
        optimizers[name].zero_grad(set_to_none=True)
        metrics["loss"].backward()
        optimizers[name].step()

    for model in models.values():
        model.train()
    step_times = wall_times({n: (lambda n=n: train_step(n)) for n in models}, device, args.warmup, args.repeats)
    rows = [
        {
            "device": device.type,
            "variant": name,
            "train_samples_per_s": args.batch * args.train_samples / min(step_times[name]),
            "train_step_s": min(step_times[name]),
            "encode_x_realtime": audio_len / 44100 / min(encode_times[name]),
            "decode_x_realtime": audio_len / 44100 / min(decode_times[name]),
            "codes_equal_to_eager_per_level": agreement[name],
            "decode_max_abs_diff": audio_diff[name],
        }
        for name in models
    ]
    eager_row = next(row for row in rows if row["variant"] == "eager")
    for row in rows:
        for figure in SPEEDUP_FIGURES:
            row[f"{figure}_speedup_vs_eager"] = row[figure] / eager_row[figure]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--batch", type=int, default=1, help="training batch")
    parser.add_argument("--train-samples", type=int, default=32768, help="training window (multiple of 128)")
    parser.add_argument("--audio-seconds", type=float, default=4.0, help="audio encoded and decoded per timing")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.train_samples % 128 or args.train_samples < 2048:
        parser.error("--train-samples must be a multiple of 128 and at least 2048 (linf_k)")
    chosen = devices(args)
    apply_threads(args)

    rows = [row for device in chosen for row in bench_device(args, device)]
    print(machine_line())
    print(f"{'device':6} {'variant':18} {'train samples/s':>16} {'encode ×RT':>11} {'decode ×RT':>11}  "
          f"{'codes = eager (per level)':26} {'audio max |diff|':>16}")
    for row in rows:
        speed = {key: f"{row[key]:.0f}" if key.startswith("train") else f"{row[key]:.2f}" for key in SPEEDUP_FIGURES}
        speed = {key: f"{value} ({row[f'{key}_speedup_vs_eager']:.2f}×)" for key, value in speed.items()}
        print(f"{row['device']:6} {row['variant']:18} {speed['train_samples_per_s']:>16} {speed['encode_x_realtime']:>11} "
              f"{speed['decode_x_realtime']:>11}  {', '.join(f'{a:.4f}' for a in row['codes_equal_to_eager_per_level']):26} "
              f"{row['decode_max_abs_diff']:16.1e}")
    write_results("vqvae", args, rows, args.out)


if __name__ == "__main__":
    main()
