"""Does the pipeline learn real music? Train it on an hour of recorded music on this CPU, and measure.

Music: the soundtrack of Endgame: Singularity (Max McCracken, CC BY-SA 3.0; 16 tracks, 64 minutes of
48 kHz stereo Ogg), from the Debian package singularity-music, fetched here with `apt-get download`
into the cache folder and never committed. (fb-music-high, first suggested, holds one XM tracker
module: not a recording, and FFmpeg as PyAV ships it cannot decode it.)

The run is the pipeline's own commands on pipelines/cpu_real.yaml, each timed, each resumable (rerun
the script to go on): prepare (Spleeter, 22.05 kHz), train-vqvae, encode, eval-vqvae, train-prior
--level 2, train-refiner, eval-refiner. Then it measures, on the held-out tracks:
  - the VQ-VAE's reconstruction per level (eval-vqvae's spectral convergence, SI-SDR, log-mel distance);
  - the top prior's validation bits per token (best.pt) against the unigram entropy of the held-out
    codes and their bigram conditional entropy, both estimated on those same codes (which flatters
    the baselines: a prior that learned music must still beat them);
  - the refiner's effect on held-out recordings (eval-refiner: refined vs decoded level-0 audio);
and draws the training and validation curves and the spectrogram of 10 s sampled by the top prior
(heard through the VQ-VAE's level-2 decoder). docs/real_music.md is written from the numbers.

    python bench/real_music.py [--work ~/.cache/jukebox-lite/real_music] [--doc docs/real_music.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from jukebox_lite import Run, load_vqvae, sample_codes

# bench/ is on sys.path when a script here runs
from common import add_out_argument, debian_package, machine_line, write_results

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "singularity-music"
MUSIC = Path("usr/share/games/singularity/music")  # inside the package
RECIPE = ROOT / "pipelines" / "cpu_real.yaml"
GENRE = "singularity"
STAGES = [  # (name, jukebox-lite arguments after the run folder)
    ("prepare", ["prepare", "--config", str(RECIPE), "--genre", GENRE]),
    ("train-vqvae", ["train-vqvae", "--config", str(RECIPE)]),
    ("encode", ["encode"]),
    ("eval-vqvae", ["eval-vqvae"]),
    ("train-prior", ["train-prior", "--level", "2", "--config", str(RECIPE)]),
    ("train-refiner", ["train-refiner", "--config", str(RECIPE)]),
    ("eval-refiner", ["eval-refiner", "--config", str(RECIPE)]),
]


def fetch(cache: Path) -> Path:
    """The package's music folder, downloaded and unpacked into `cache` the first time."""
    return debian_package(cache, PACKAGE) / MUSIC


def run_stages(run: Path, music: Path, log: Path, timings: Path) -> dict[str, float]:
    """Every stage as the CLI runs it; wall seconds per stage, kept in `timings` as each one ends, so a
    rerun skips the stages already done and reports their first (real) times."""
    # one torch thread: on a 2-core machine with anything else running, two OpenMP threads that spin at
    # every barrier made a VQ-VAE step 10× slower (6.5 s instead of 0.6 s, measured here)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seconds = json.loads(timings.read_text()) if timings.exists() else {}
    for name, arguments in STAGES:
        if name in seconds:
            continue
        argv = [sys.executable, "-m", "jukebox_lite", *arguments, "--run", str(run)]
        if name == "prepare":
            argv += ["--audio", str(music)]
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        with open(log, "a") as out:
            subprocess.run(argv, check=True, stdout=out, stderr=subprocess.STDOUT, env=env)
        seconds[name] = time.perf_counter() - start
        timings.write_text(json.dumps(seconds, indent=1))
    return {name: seconds[name] for name, _ in STAGES}


def entropies_bits(codes: list[np.ndarray], bins: int) -> tuple[float, float]:
    """(unigram entropy, bigram conditional entropy H(x_t | x_t-1)) of the held-out codes, in bits per token."""
    tokens = np.concatenate(codes).astype(np.int64)
    p = np.bincount(tokens, minlength=bins) / tokens.size
    unigram = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    pairs = np.concatenate([c[:-1].astype(np.int64) * bins + c[1:] for c in codes])
    joint = np.bincount(pairs, minlength=bins * bins).reshape(bins, bins) / pairs.size
    previous = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    bigram = float(-(joint[nz] * np.log2((joint / np.where(previous > 0, previous, 1))[nz])).sum())
    return unigram, bigram


def bigram_cross_entropy_bits(train: list[np.ndarray], valid: list[np.ndarray], bins: int) -> float:
    """Bits per token on the held-out codes of a bigram model fit on the training codes (add-one smoothing):
    the fair version of the bigram baseline, which has not seen the held-out tracks."""
    counts = np.ones((bins, bins))
    for c in train:
        np.add.at(counts, (c[:-1].astype(np.int64), c[1:].astype(np.int64)), 1)
    log_p = np.log2(counts / counts.sum(axis=1, keepdims=True))
    pairs = [(c[:-1].astype(np.int64), c[1:].astype(np.int64)) for c in valid]
    return float(-np.concatenate([log_p[a, b] for a, b in pairs]).mean())


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def draw_curves(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = [("VQ-VAE", run.vqvae, "l2_l0"), ("top prior", run.prior(2), "bits_per_token"), ("refiner", run.refiner, "loss")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    for ax, (title, folder, metric) in zip(axes, folders):
        curves = scalars(folder.path)
        for split, style in (("train", "-"), ("valid", "o-")):
            points = curves.get(f"{split}/{metric}")
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, style, markersize=3, label=split)
        ax.set_title(f"{title}: {metric}")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@torch.no_grad()
def sample_spectrogram(run: Run, path: Path, seconds: float = 10.0) -> None:
    """10 s of top-level codes sampled by the best prior, decoded at level 2, as a spectrogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vqvae, top = load_vqvae(run.vqvae.path), run.load_prior(2, which="best")
    prior, vocab = top.prior, top.vocab
    cfg, hop = prior.cfg, vqvae.hop_lengths[2]
    tokens = math.ceil(seconds * vqvae.sample_rate / hop)
    total = max(round(cfg.min_duration * vqvae.sample_rate) + 1, tokens * hop)
    labels = torch.tensor([[total, 0, cfg.n_ctx * hop, vocab.artist_id(vocab.artists[0]), vocab.genre_id(GENRE)]
                           + [-1] * (cfg.max_bow_genre_size - 1)])
    codes = sample_codes(prior, 1, tokens, labels=labels, generator=torch.Generator().manual_seed(0), progress=True)
    audio = vqvae.decode_long(codes, level=2)[0, 0].numpy()
    fig, ax = plt.subplots(figsize=(12, 3.2))
    ax.specgram(audio, NFFT=1024, Fs=vqvae.sample_rate, noverlap=768, cmap="magma")
    ax.set_title(f"10 s sampled by the top prior (best.pt), decoded at level 2 ({vqvae.sample_rate} Hz)")
    ax.set_xlabel("s")
    ax.set_ylabel("Hz")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def measure(run: Run) -> dict:
    vqvae_report = json.loads(run.vqvae.eval_report.read_text())
    refiner_report = json.loads(run.refiner.eval_report.read_text())
    corpus = run.codes_corpus()
    valid = [np.asarray(corpus.file_codes(i, 2)) for i in corpus.split_files("valid")]
    unigram, bigram = entropies_bits(valid, corpus.bins)
    train = [np.asarray(corpus.file_codes(i, 2)) for i in corpus.split_files("train")]
    bigram_fair = bigram_cross_entropy_bits(train, valid, corpus.bins)
    best = torch.load(run.prior(2).best, map_location="cpu", weights_only=True)
    prior_state = torch.load(run.prior(2).checkpoint, map_location="cpu", weights_only=True)
    return {
        "vqvae": vqvae_report,
        "refiner": refiner_report,
        "prior": {
            "valid_bits_per_token": best["valid_loss"] / math.log(2),
            "best_step": best["step"],
            "last_step": prior_state["step"],
            "anneal_start": prior_state["validation"]["anneal_start"],
            "unigram_bits": unigram,
            "bigram_bits": bigram,
            "bigram_from_train_bits": bigram_fair,
            "valid_tokens": int(sum(len(c) for c in valid)),
            "valid_files": len(valid),
            "train_files": len(corpus.split_files("train")),
        },
    }


def write_doc(path: Path, numbers: dict, seconds: dict[str, float], figures: tuple[str, str], note: str) -> None:
    prior, vq, refiner = numbers["prior"], numbers["vqvae"], numbers["refiner"]
    bits = prior["valid_bits_per_token"]
    beats = {name: bits < prior[key] for name, key in (
        ("unigram", "unigram_bits"), ("bigram", "bigram_bits"), ("trained bigram", "bigram_from_train_bits"))}
    lines = [
        "# Real music on a CPU: does it learn?",
        "",
        f"Measured by `python bench/real_music.py` on {machine_line()}, {time.strftime('%Y-%m-%d')}.",
        *([note, ""] if note else []),
        "Music: the soundtrack of Endgame: Singularity (Max McCracken, CC BY-SA 3.0; Debian package",
        f"`{PACKAGE}`): 16 tracks, 64 minutes, fetched by the benchmark, never committed. Recipe:",
        "`pipelines/cpu_real.yaml` (the demo's model sizes at 22.05 kHz, trained longer). Held out by the data",
        f"stage's content-hash split: {prior['valid_files']} tracks ({prior['train_files']} for training).",
        "",
        "## Wall time per stage",
        "",
        "| stage | minutes |",
        "|---|---:|",
        *(f"| {name} | {s / 60:.1f} |" for name, s in seconds.items()),
        f"| total | {sum(seconds.values()) / 60:.1f} |",
        "",
        "## VQ-VAE reconstruction of the held-out tracks",
        "",
        "| level | hop | spectral convergence (dB) | SI-SDR (dB) | log-mel distance | codebook usage |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r['level']} | {r['hop_length']} | {r['spectral_convergence_db']:.2f} | {r['si_sdr_db']:.2f} | "
            f"{r['log_mel_distance']:.3f} | {r['codebook_usage']:.2f} |"
            for r in vq["levels"]
        ),
        "",
        "## Top prior: validation bits per token against the baselines",
        "",
        f"Held-out level-2 codes: {prior['valid_tokens']} tokens. The unigram and bigram entropies are estimated",
        "on those same codes, which flatters them (the bigram's 65 536 probabilities are fit to the very",
        "pairs it is scored on); the trained bigram is fit on the training tracks, as the prior is.",
        "",
        "| model | bits per token |",
        "|---|---:|",
        f"| top prior, best.pt (step {prior['best_step']}) | **{prior['valid_bits_per_token']:.3f}** |",
        f"| unigram entropy of the held-out codes | {prior['unigram_bits']:.3f} |",
        f"| bigram conditional entropy of the held-out codes | {prior['bigram_bits']:.3f} |",
        f"| bigram model trained on the training codes, on the held-out codes | {prior['bigram_from_train_bits']:.3f} |",
        "",
        "The prior " + ", ".join(f"{'beats' if won else 'does **not** beat'} the {name}" for name, won in beats.items()) + ".",
        f"Training ran to step {prior['last_step']}"
        + (f"; annealing started by itself at step {prior['anneal_start']} when the validation loss flattened."
           if prior["anneal_start"] is not None else "; the validation loss did not plateau before the step budget."),
        "",
        f"![training and validation curves]({figures[0]})",
        "",
        f"![a sample]({figures[1]})",
        "",
        "## Refiner on held-out recordings (refined vs decoded level-0 audio)",
        "",
        "| metric | decoded | estimate alone | closer | refined (with detail) | closer |",
        "|---|---:|---:|---|---:|---|",
        *(
            f"| {m} | {refiner['decoded'][m]:.3f} | {refiner['estimate'][m]:.3f} | {'yes' if refiner['estimate_closer'][m] else 'no'} | "
            f"{refiner['refined'][m]:.3f} | {'yes' if refiner['closer'][m] else 'no'} |"
            for m in refiner["closer"]
        ),
        "",
        f"Verdict: the refiner {'helps' if refiner['helpful'] else 'does NOT help'} on these recordings "
        f"({refiner['steps']} steps, strength {refiner['strength']}); its estimate alone is closer on "
        f"{sum(refiner['estimate_closer'].values())} of {len(refiner['estimate_closer'])} metrics.",
        "",
    ]
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "jukebox-lite" / "real_music",
                        help="where the music and the run go (reused by a rerun)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "real_music.md", help="the report to write")
    parser.add_argument("--note", default="", help="a sentence for the report about this run (e.g. a shared machine)")
    add_out_argument(parser)
    args = parser.parse_args()
    music = fetch(args.work / "package")
    run_dir = args.work / "run"
    seconds = run_stages(run_dir, music, args.work / "stages.log", args.work / "timings.json")
    run = Run(run_dir)
    curves, spectrogram = args.doc.with_name("real_music_curves.png"), args.doc.with_name("real_music_sample.png")
    draw_curves(run, curves)
    sample_spectrogram(run, spectrogram)
    numbers = measure(run)
    write_doc(args.doc, numbers, seconds, (curves.name, spectrogram.name), args.note)
    row = {"device": "cpu", **{f"{k}_s": v for k, v in seconds.items()}, **numbers["prior"],
           "refiner_helpful": numbers["refiner"]["helpful"]}
    write_results("real_music", args, [row], args.out)


if __name__ == "__main__":
    main()
