"""Refine coarse VQ-VAE audio with the run's refiner (RUN/refiner/last.pt): its estimate, and detail on top.

    jukebox-lite refine --run RUN coarse.wav [more.wav ...] --out FOLDER [--steps N --strength S --seed K]

Each input is made to fit the refiner: other sample rates are resampled and several channels are
averaged to mono, each with a warning. The refiner must have been trained on the audio of this
run's VQ-VAE (RUN/vqvae/last.pt), otherwise it is refused. Each output, FOLDER/<input name>.refined.wav
(24-bit), is written atomically: a failed or interrupted run leaves an existing file untouched.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from jukebox_lite.core.atomic import atomic_path
from jukebox_lite.core.audio import AudioError, load_audio, resample, to_mono
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from jukebox_lite.core.distributed import resolve_device
from jukebox_lite.algorithms.refining import refine
from jukebox_lite.stages.common import add_run_arguments

log = logging.getLogger(__name__)

SILENCE_PEAK = 1e-4  # about -80 dBFS: below this the input holds nothing to refine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "reads RUN/refiner (and RUN/vqvae, to check the refiner was trained on it)")
    parser.add_argument("audio", type=Path, nargs="+", help="coarse audio files to refine")
    parser.add_argument("--out", type=Path, required=True, help="folder the refined files go to (<name>.refined.wav)")
    parser.add_argument("--steps", type=int, help="the detail model's denoising steps (default: the refiner's refiner.steps)")
    parser.add_argument("--strength", type=float, help="where the detail model starts: 1 from noise, 0 the estimate alone")
    parser.add_argument("--seed", type=int, default=0, help="noise seed; the same seed gives the same output")


def _read_input(path: Path, sample_rate: int) -> np.ndarray:
    """The input as mono float32 (1, T) at `sample_rate`; what had to change is logged as a warning."""
    try:
        audio, sr = load_audio(path)
    except AudioError as e:
        raise UserError(f"Input '{path}' cannot be refined: {e}; give a finite, decodable audio file.") from None
    if audio.shape[0] > 1:
        log.warning("%s has %d channels; the refiner works in mono, so they are averaged", path, audio.shape[0])
        audio = to_mono(audio)
    if sr != sample_rate:
        log.warning("%s is at %d Hz; resampling to the refiner's %d Hz", path, sr, sample_rate)
        audio = resample(audio, sr, sample_rate)
    if np.abs(audio).max() < SILENCE_PEAK:
        log.warning("%s is silent; the refiner has nothing to follow and its output will be mostly its own noise", path)
    return audio


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out '{args.out}' is a file; give the folder the refined audio goes to.")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps is {args.steps}; use at least 1.")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise UserError(f"--strength is {args.strength}; use a value from 0 to 1.")
    run = Run(args.run)
    checkpoint = run.refiner.checkpoint
    if not checkpoint.is_file():
        raise UserError(f"No refiner at '{checkpoint}'; train one first (jukebox-lite train-refiner, or make refiner).")
    expected = None
    if run.vqvae.has_checkpoint():
        expected = run.load_vqvae().fingerprint()
    else:
        log.warning("%s is missing, so the refiner cannot be checked against the run's VQ-VAE", run.vqvae.checkpoint)
    device = resolve_device(args.device)
    model = run.load_refiner(device, expected)
    sample_rate = model.config.sample_rate

    inputs = [(path, _read_input(path, sample_rate)) for path in args.audio]  # every input is checked first
    args.out.mkdir(parents=True, exist_ok=True)
    for path, audio in inputs:
        coarse = torch.from_numpy(audio)[None]  # (1, 1, T)
        refined = refine(model, coarse, steps=args.steps, strength=args.strength, seed=args.seed, progress=True)
        if not torch.isfinite(refined).all():  # a broken checkpoint, not the input: the input was checked above
            raise UserError(f"Refiner '{checkpoint}' produced NaN or infinite samples; its weights are broken, retrain it.")
        out = args.out / f"{path.stem}.refined.wav"
        with atomic_path(out) as tmp:
            sf.write(tmp, refined[0].numpy().T, sample_rate, subtype="PCM_24", format="WAV")
        log.info(
            "wrote %s (%.1f s at %d Hz, %d steps, strength %.2f, seed %d)", out, audio.shape[1] / sample_rate,
            sample_rate, args.steps or model.config.steps,
            model.config.strength if args.strength is None else args.strength, args.seed,
        )
    return 0
