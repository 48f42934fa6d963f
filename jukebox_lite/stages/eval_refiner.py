"""eval-refiner: does the refiner bring the VQ-VAE's decoded audio closer to the original?

    RUN/refiner/{last,best}.pt + RUN/vqvae/last.pt + RUN/data (valid split; train if none) or --audio DIR
        → OUT/eval.json (default RUN/refiner/eval.json) and a table in the log

It judges what `sample` would do: the weights the recipe's `sample.checkpoint` names, refined with
`sample.refine_steps`/`refine_strength` (the refiner's own settings where those are null; --steps and
--strength override both). The report records the weights' SHA-256, so `sample` knows whether the
verdict is about the weights it loads: with `sample.refine: auto` it skips a refiner judged unhelpful.

Held-out files are cut into segments (as eval-vqvae cuts them); each is encoded and decoded by the
VQ-VAE at the refiner's `cond_level` (the "decoded" audio, what the refiner was trained to clean),
then refined with those weights and settings (the noise from --seed).
Both are compared with the original on eval-vqvae's metrics, averaged over segments: multi-resolution
STFT distance, log-mel distance, high-band energy error, spectral convergence and SI-SDR. The
high-band error is signed (negative = lost treble); "closer" compares its mean absolute value.

The verdict is a boolean per metric (refined closer than decoded, on the mean) and `helpful`: closer
on all three spectral metrics the refiner is meant to fix (MR-STFT, log-mel, high band). A generative
refiner invents fine detail whose phase differs from the original's, so the waveform-matching
metrics (SI-SDR, spectral convergence) can fall even when it sounds better; they are reported, with
`closer_on_every_metric`, not hidden. The share of segments on which the refined audio wins is
given per metric, so one outlier segment cannot decide the verdict unnoticed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from jukebox_lite.algorithms import metrics
from jukebox_lite.core.atomic import atomic_path, file_sha256
from jukebox_lite.core.precision import autocast
from jukebox_lite.core.distributed import resolve_device
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from jukebox_lite.stages.common import add_recipe_arguments, add_run_arguments, load_recipe
from jukebox_lite.stages.evaluation import add_segment_arguments, check_segment_arguments, evaluation_clips, text_table
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.algorithms.refining import refine
from jukebox_lite.models.vqvae import VQVAE

log = logging.getLogger(__name__)

# metric → True where higher is better; the signed high-band error is reported but judged by its |mean|
CLOSER_IS_HIGHER = {
    "mr_stft_distance": False,
    "log_mel_distance": False,
    "high_band_abs_error_db": False,
    "spectral_convergence_db": False,
    "si_sdr_db": True,
}
VERDICT_METRICS = ("mr_stft_distance", "log_mel_distance", "high_band_abs_error_db")  # what `helpful` needs


@torch.no_grad()
def evaluate(
    refiner: Refiner,
    vqvae: VQVAE,
    clips: list[torch.Tensor],
    batch_size: int = 4,
    steps: int | None = None,
    strength: float | None = None,
    seed: int = 0,
) -> dict[str, dict[str, list[float]]]:
    """Clips (1, time) at the models' rate (lengths multiples of the cond level's hop) →
    {"decoded": {metric: per-clip values}, "refined": {...}}, in the clips' order; and "estimate" (the
    estimator's output alone) where the refined audio has detail on top of it."""
    device, level = refiner.device, refiner.config.cond_level
    strength = refiner.config.strength if strength is None else strength
    names = ("decoded", "refined", "estimate") if refiner.detail is not None and strength > 0 else ("decoded", "refined")
    values: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in names}
    order: list[int] = []
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, clip in enumerate(clips):
        by_length[clip.shape[-1]].append(index)
    batches = [group[i : i + batch_size] for group in by_length.values() for i in range(0, len(group), batch_size)]
    for batch in tqdm(batches, desc="eval-refiner", unit="batch"):
        x = torch.stack([clips[i] for i in batch]).to(device)  # (B, 1, T)
        with autocast(device):
            decoded = vqvae.decode(vqvae.encode(x, levels=[level]), level).float()  # (B, 1, T)
        outputs = {"decoded": decoded.cpu(), "refined": refine(refiner, decoded, steps=steps, strength=strength, seed=seed)}
        if "estimate" in names:
            outputs["estimate"] = refine(refiner, decoded, strength=0.0)  # (B, 1, T) on the CPU
        x = x.cpu()
        for name, audio in outputs.items():
            for metric, per_item in metrics.audio_metrics(x, audio, refiner.config.sample_rate).items():
                values[name][metric] += per_item.tolist()
        order += batch
    position = {index: i for i, index in enumerate(order)}  # back to the clips' order
    return {
        name: {metric: [per_clip[position[i]] for i in range(len(clips))] for metric, per_clip in by_metric.items()}
        for name, by_metric in values.items()
    }


def closer_than_decoded(values: dict[str, dict[str, list[float]]], means: dict, name: str) -> tuple[dict, dict]:
    """({metric: `name`'s mean closer to the original than decoded's}, {metric: share of segments where it is})."""
    closer, wins = {}, {}
    for metric, higher in CLOSER_IS_HIGHER.items():
        sign = 1.0 if higher else -1.0
        closer[metric] = bool(sign * (means[name][metric] - means["decoded"][metric]) > 0)
        pairs = zip(values[name][metric], values["decoded"][metric])
        wins[metric] = sum(sign * (r - d) > 0 for r, d in pairs) / len(values[name][metric])
    return closer, wins


def verdict(values: dict[str, dict[str, list[float]]]) -> dict:
    """Means per metric for decoded and refined (and the estimate alone), which is closer to the original,
    and how often per segment. The verdict is the refined audio's: what sample writes."""
    means = {name: {m: sum(v) / len(v) for m, v in by_metric.items()} for name, by_metric in values.items()}
    closer, wins = closer_than_decoded(values, means, "refined")
    estimate = {}
    if "estimate" in values:
        estimate_closer, estimate_wins = closer_than_decoded(values, means, "estimate")
        estimate = {"estimate": means["estimate"], "estimate_closer": estimate_closer, "estimate_segment_win_rate": estimate_wins}
    return {
        "decoded": means["decoded"],
        "refined": means["refined"],
        **estimate,
        "closer": closer,
        "segment_win_rate": wins,
        "verdict_metrics": list(VERDICT_METRICS),
        "helpful": all(closer[m] for m in VERDICT_METRICS),
        "closer_on_every_metric": all(closer.values()),
    }


def format_table(report: dict) -> str:
    estimate = "estimate" in report
    header = ["metric", "decoded", *(["estimate alone"] if estimate else []), "refined", "closer", "segments won"]
    rows = [
        [metric, f"{report['decoded'][metric]:.4g}", *([f"{report['estimate'][metric]:.4g}"] if estimate else []),
         f"{report['refined'][metric]:.4g}", "yes" if report["closer"][metric] else "NO", f"{report['segment_win_rate'][metric]:.0%}"]
        for metric in CLOSER_IS_HIGHER
    ]
    rows.append(["high_band_error_db (signed)", f"{report['decoded']['high_band_error_db']:.4g}",
                 *([f"{report['estimate']['high_band_error_db']:.4g}"] if estimate else []),
                 f"{report['refined']['high_band_error_db']:.4g}", "", ""])
    return text_table(header, rows)


def evaluate_run(
    run_dir: Path,
    out_dir: Path | None = None,
    audio_dir: Path | None = None,
    segment_seconds: float = 3.0,
    max_segments: int = 4,
    batch_size: int = 4,
    steps: int | None = None,
    strength: float | None = None,
    seed: int = 0,
    device: str = "auto",
    checkpoint: str = "last",
) -> dict:
    """The report on the refiner's `checkpoint` weights (last or best), also written to OUT_DIR
    (default RUN/refiner)/eval.json."""
    device = resolve_device(device)
    run = Run(run_dir)
    out = run.refiner.eval_report if out_dir is None else Path(out_dir) / run.refiner.eval_report.name
    vqvae = run.load_vqvae(device)
    fingerprint = vqvae.fingerprint()
    refiner = run.load_refiner(device, fingerprint, checkpoint)
    weights = run.refiner.weights(checkpoint)
    cfg = refiner.config
    clips, files, source, seconds = evaluation_clips(
        run, audio_dir, cfg.sample_rate, segment_seconds, max_segments, vqvae.hop_lengths[cfg.cond_level]
    )
    steps = cfg.steps if steps is None else steps
    strength = cfg.strength if strength is None else strength
    log.info(
        "evaluating the refiner on %d segments (%.1f s) from %d files of %s (level-%d audio, %d steps, strength %.2f)",
        len(clips), seconds, files, source, cfg.cond_level, steps, strength,
    )
    values = evaluate(refiner, vqvae, clips, batch_size, steps, strength, seed)
    report = {
        "refiner": str(weights),
        "refiner_sha256": file_sha256(weights),
        "vqvae_fingerprint": fingerprint,
        "source": source,
        "files": files,
        "segments": len(clips),
        "seconds": seconds,
        "sample_rate": cfg.sample_rate,
        "cond_level": cfg.cond_level,
        "steps": steps,
        "strength": strength,
        "seed": seed,
        **verdict(values),
    }
    if not all(math.isfinite(v) for name in ("decoded", "refined") for v in report[name].values()):
        log.warning("some metrics are not finite; is the audio silent?")
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    judged = "helps" if report["helpful"] else "does NOT help"
    log.info("refiner vs VQ-VAE level-%d audio on %s:\n%s", cfg.cond_level, source, format_table(report))
    log.info("the refiner %s (closer on %s: %s); wrote %s", judged, ", ".join(VERDICT_METRICS), report["helpful"], out)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=("sample",))
    add_run_arguments(parser, "reads RUN/refiner, RUN/vqvae (and RUN/data's validation split)")
    parser.add_argument("--out", type=Path, help="folder the report eval.json goes to (default RUN/refiner)")
    add_segment_arguments(parser, segment_seconds=3.0, max_segments=4, batch_help="segments refined together")
    parser.add_argument("--steps", type=int, help="denoising steps (default: sample.refine_steps, else the refiner's)")
    parser.add_argument("--strength", type=float, help="where the detail model starts: 1 from noise, 0 the estimate alone "
                        "(default: sample.refine_strength, else the refiner's)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the sampler")


def run(args: argparse.Namespace) -> int:
    check_segment_arguments(args)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps is {args.steps}; use at least 1.")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise UserError(f"--strength is {args.strength}; use a value from 0 to 1.")
    sample = load_recipe(args).sample  # judge what sample would do
    evaluate_run(
        args.run, args.out, args.audio, args.segment_seconds, args.max_segments, args.batch_size,
        sample.refine_steps if args.steps is None else args.steps,
        sample.refine_strength if args.strength is None else args.strength,
        args.seed, args.device, sample.checkpoint,
    )
    return 0
