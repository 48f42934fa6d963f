"""eval-vqvae: how well each level of the trained VQ-VAE rebuilds audio it did not train on.

    RUN/vqvae/last.pt + RUN/data (valid split; train if none) or --audio DIR
        → --json OUT (default RUN/vqvae/eval.json) and a table in the log

Per level: spectral convergence (dB, lower is better), SI-SDR (dB, higher), log-mel distance,
multi-resolution STFT distance, high-band energy error (dB, 0 is best; negative = lost treble),
and how much of the codebook the audio uses (fraction of codes, perplexity). Files are cut into
segments of --segment-seconds (at most --max-segments per file, spread over it), each encoded and
decoded on its own, as the sampler's windows are.
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
from jukebox_lite.core.atomic import atomic_path
from jukebox_lite.stages.common import add_run_arguments
from jukebox_lite.stages.evaluation import add_segment_arguments, check_segment_arguments, evaluation_clips, text_table
from jukebox_lite.core.precision import autocast
from jukebox_lite.core.distributed import resolve_device
from jukebox_lite.runs import Run
from jukebox_lite.models.vqvae import VQVAE

log = logging.getLogger(__name__)

AUDIO_METRICS = ("spectral_convergence_db", "si_sdr_db", "log_mel_distance", "mr_stft_distance", "high_band_error_db")


@torch.no_grad()
def evaluate(model: VQVAE, clips: list[torch.Tensor], batch_size: int = 4) -> list[dict]:
    """Clips (1, time) at the model's rate (lengths multiples of the top hop) → per level metric means.

    Every clip counts once in the means; the codebook metrics pool the codes of all clips.
    """
    device = next(model.parameters()).device
    sums = [defaultdict(float) for _ in range(model.levels)]
    histograms = [torch.zeros(model.config.l_bins, dtype=torch.float64) for _ in range(model.levels)]
    by_length: dict[int, list[torch.Tensor]] = defaultdict(list)
    for clip in clips:
        by_length[clip.shape[-1]].append(clip)
    batches = [group[i : i + batch_size] for group in by_length.values() for i in range(0, len(group), batch_size)]
    for batch in tqdm(batches, desc="eval-vqvae", unit="batch"):
        x = torch.stack(batch).to(device)  # (B, 1, T)
        with autocast(device):
            codes = model.encode(x)
            for level in range(model.levels):
                recon = model.decode(codes, level).float()  # (B, 1, T)
                values = metrics.audio_metrics(x, recon, model.sample_rate)
                for name in AUDIO_METRICS:
                    sums[level][name] += float(values[name].sum())
                histograms[level] += metrics.code_histogram(codes[level], model.config.l_bins)
    n = len(clips)
    results = []
    for level in range(model.levels):
        entry = {"level": level, "hop_length": model.hop_lengths[level]}
        entry.update({name: sums[level][name] / n for name in AUDIO_METRICS})
        entry["codebook_usage"] = metrics.codebook_usage(histograms[level])
        entry["perplexity"] = metrics.codebook_perplexity(histograms[level])
        results.append(entry)
    return results


def format_table(results: list[dict]) -> str:
    header = ["level", "hop", "SC dB", "SI-SDR dB", "log-mel", "MR-STFT", "HF err dB", "usage", "perplexity"]
    rows = [
        [
            str(r["level"]), str(r["hop_length"]), f"{r['spectral_convergence_db']:.2f}", f"{r['si_sdr_db']:.2f}",
            f"{r['log_mel_distance']:.3f}", f"{r['mr_stft_distance']:.3f}", f"{r['high_band_error_db']:.2f}",
            f"{r['codebook_usage']:.3f}", f"{r['perplexity']:.1f}",
        ]
        for r in results
    ]
    return text_table(header, rows)


def evaluate_run(
    run_dir: Path,
    out_dir: Path | None = None,
    audio_dir: Path | None = None,
    segment_seconds: float = 6.0,
    max_segments: int = 8,
    batch_size: int = 4,
    device: str = "auto",
) -> dict:
    """The report, also written to OUT_DIR (default RUN/vqvae)/eval.json."""
    run = Run(run_dir)
    out = run.vqvae.eval_report if out_dir is None else Path(out_dir) / run.vqvae.eval_report.name
    model = run.load_vqvae(resolve_device(device))
    clips, files, source, seconds = evaluation_clips(
        run, audio_dir, model.sample_rate, segment_seconds, max_segments, model.hop_lengths[-1]
    )
    log.info("evaluating the VQ-VAE on %d segments (%.1f s) from %d files of %s", len(clips), seconds, files, source)
    levels = evaluate(model, clips, batch_size)
    report = {
        "vqvae_fingerprint": model.fingerprint(),
        "source": source,
        "files": files,
        "segments": len(clips),
        "seconds": seconds,
        "sample_rate": model.sample_rate,
        "levels": levels,
    }
    if not all(math.isfinite(v) for level in levels for v in level.values()):
        log.warning("some metrics are not finite; is the audio silent?")
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    log.info("VQ-VAE reconstruction on %s:\n%s", source, format_table(levels))
    log.info("wrote %s", out)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "reads RUN/vqvae (and RUN/data's validation split)")
    parser.add_argument("--out", type=Path, help="folder the report eval.json goes to (default RUN/vqvae)")
    add_segment_arguments(parser, segment_seconds=6.0, max_segments=8, batch_help="segments per forward pass")


def run(args: argparse.Namespace) -> int:
    check_segment_arguments(args)
    evaluate_run(args.run, args.out, args.audio, args.segment_seconds, args.max_segments, args.batch_size, args.device)
    return 0
