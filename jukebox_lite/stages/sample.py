"""Sample stage: long tracks from the trained models, every stage audible.

    jukebox-lite sample --run RUN --seconds 90 --n 4 --genre deep_house [--morph-to tech_house]
        [--prime intro.wav] [--like track.wav | --like-mix a.wav b.wav] [--temperature 0.98] [--seed 0] [--fast]

    top prior (level 2)   windowed sampling with genre and timing labels for every window
      → upsamplers        level 1 and level 0 codes conditioned on the level above (--fast skips them)
      → VQ-VAE decoding   each level decoded alone, in chunks (bounded memory for any length)
      → refiner           diffusion refinement of the decoded level it was trained on
    RUN/samples/<id>/{level2,level1,level0,refined}.wav, codes_level2.npy, meta.json

The fast path decodes level 1 and refines it with a refiner trained on level-1 audio
(refiner.cond_level 1), skipping the level-0 upsampler, which is by far the slowest stage.

A top prior trained with a track character (prior_level2.character_tokens) gives every window of a
track the same character vector: that of a reference recording (--like), the midpoint of two
(--like-mix), the prime's own (--prime), or by default one drawn from the corpus's distribution,
a new one for each track. meta.json says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from jukebox_lite.core.atomic import atomic_path, file_sha256
from jukebox_lite.core.audio import AudioError, load_audio, resample, to_mono
from jukebox_lite.stages.common import add_recipe_arguments, add_run_arguments, load_recipe
from jukebox_lite.core.config import RecipeConfig, SampleConfig
from jukebox_lite.core.distributed import resolve_device
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import LoadedPrior, Run, SampleFolder
from jukebox_lite.core.precision import autocast
from jukebox_lite.algorithms.refining import refine
from jukebox_lite.algorithms.sampling import auto_segments, morph, plan_segments, sample_codes
from jukebox_lite.models.vqvae import VQVAE

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# The stage


@dataclass
class SampleRequest:
    """What the user asked for (the command line's options)."""

    seconds: float
    n: int = 1
    genre: str | None = None
    artist: str | None = None
    morph_to: str | None = None  # a genre the track morphs into by its end
    prime: Path | None = None  # audio whose top-level codes open every sample
    like: tuple[Path, ...] = ()  # one or two recordings whose track character every sample takes (two: their midpoint)
    seed: int = 0
    fast: bool = False  # stop at level 1 (skip the level-0 upsampler)
    name: str | None = None  # sample folder prefix (default: a timestamp)
    device: str = "auto"
    # the recipe's sample section where None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    refine_steps: int | None = None
    refine_strength: float | None = None
    character_guidance: float | None = None

    def settings(self, recipe: SampleConfig) -> SampleConfig:
        """The recipe's sample section with this request's options put over it, checked."""
        names = ("temperature", "top_k", "top_p", "refine_steps", "refine_strength", "character_guidance")
        chosen = {k: getattr(self, k) for k in names}
        settings = dataclasses.replace(recipe, **{k: v for k, v in chosen.items() if v is not None})
        settings.validate()
        return settings


def _labels(loaded: LoadedPrior, request: SampleRequest, genre: str | None, total_samples: int, n: int):
    """The label rows [total_length, offset, sample_length, artist, genre, -1...] (n, 4 + G), or None."""
    cfg = loaded.prior.cfg
    if not cfg.labels:
        return None
    vocab = loaded.vocab  # empty for an imported OpenAI prior: its own ids, 0 is a safe choice
    genre_id = vocab.genre_id(genre) if genre and vocab.genres else 0
    artist_id = vocab.artist_id(request.artist) if request.artist and vocab.artists else 0
    row = [total_samples, 0, cfg.n_ctx * cfg.hop_length, artist_id, genre_id] + [-1] * (cfg.max_bow_genre_size - 1)
    return torch.tensor([row] * n, dtype=torch.long)


def _top_codes(vqvae: VQVAE, path: Path, what: str, tokens: int | None = None) -> torch.Tensor:
    """The top-level codes of an audio file (its first `tokens`, or all) → (1, P); `what` names it in errors."""
    try:
        audio, sr = load_audio(path)
    except AudioError as e:
        raise UserError(f"{what} '{path}' cannot be used: {e}.") from None
    audio = resample(to_mono(audio), sr, vqvae.sample_rate)
    top = vqvae.hop_lengths[-1]
    usable = min(audio.shape[1] // top, tokens or audio.shape[1]) * top
    if usable == 0:
        raise UserError(f"{what} '{path}' is shorter than one top-level token ({top} samples).")
    x = torch.from_numpy(audio[:, :usable])[None].to(next(vqvae.parameters()).device)  # (1, 1, T)
    return vqvae.encode(x, levels=[vqvae.levels - 1])[-1]  # (1, P)


def _character(
    top: LoadedPrior, vqvae: VQVAE, request: SampleRequest, prime: torch.Tensor | None, generator: torch.Generator
) -> tuple[torch.Tensor | None, str | None]:
    """Each track's character (n, D) and a sentence saying where it came from; (None, None) for a prior without one."""
    prior = top.prior
    if not prior.cfg.character_tokens:
        if request.like:
            raise UserError(
                f"--like needs a top prior trained with a track character, and '{top.path}' has none "
                "(train one with prior_level2.character_tokens, e.g. 512)."
            )
        return None, None
    if request.like:
        vectors = torch.cat([prior.describe(_top_codes(vqvae, path, "Reference recording")) for path in request.like])
        named = " and ".join(repr(str(path)) for path in request.like)
        why = f"like {named}" if len(request.like) == 1 else f"between {named} (the midpoint of their characters)"
        return vectors.mean(0, keepdim=True).repeat(request.n, 1), why
    if prime is not None:
        return prior.describe(prime[:1]).repeat(request.n, 1), f"the prime's own ('{request.prime}')"
    return prior.character.draw(request.n, generator), "drawn from the corpus's distribution of characters, one per track"


def _write_wav(path: Path, audio: torch.Tensor, sr: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(tmp, audio.clamp(-1, 1).numpy(), sr, subtype="PCM_16", format="WAV")


def refine_decision(run: Run, settings: SampleConfig) -> tuple[bool, float | None, str]:
    """Whether the samples are refined, at which strength (None: the settings' own), and a sentence saying
    why (kept in meta.json; logged here, as a warning where the user may not expect it).

    `sample.refine: auto` follows eval-refiner's verdict when that report judged the very weights
    sample loads (same SHA-256): a refiner that made held-out audio worse is not applied. The strength
    is chosen there too: the estimate alone (strength 0) where it helped and the detail on top did not,
    or helped on fewer of the five metrics. Unjudged weights are applied with a warning; the decoded
    level's wav is written beside refined.wav always.
    """
    def decided(applied: bool, why: str, warn: bool = False, strength: float | None = None) -> tuple[bool, float | None, str]:
        (log.warning if warn else log.info)("%s", why)
        return applied, strength, why

    if not run.refiner.has_checkpoint():
        return decided(False, f"no refiner in {run.refiner.path}: the samples get no refined.wav (train one with make refiner)", True)
    if settings.refine == "never":
        return decided(False, "sample.refine is never: the samples get no refined.wav")
    if settings.refine == "always":
        return decided(True, "sample.refine is always: refining whatever eval-refiner said")
    weights = run.refiner.weights(settings.checkpoint)
    report = json.loads(run.refiner.eval_report.read_text()) if run.refiner.eval_report.is_file() else {}
    if not weights.is_file() or report.get("refiner_sha256") != file_sha256(weights):
        why = f"eval-refiner has not judged {weights.name} (make refiner runs it); refining, with the unrefined track beside it"
        return decided(True, why, True)

    def scores(name: str) -> str:
        return ", ".join(f"{m} {report['decoded'][m]:.3g} → {report[name][m]:.3g}" for m in report["verdict_metrics"])

    estimate, refined = report.get("estimate_closer"), sum(report["closer"].values())
    if estimate is not None and all(estimate[m] for m in report["verdict_metrics"]):
        closer = f"closer on {sum(estimate.values())} of {len(estimate)}: {scores('estimate')}"
        if not report["helpful"]:
            why = (f"eval-refiner found the refiner makes held-out audio worse with its detail ({scores('refined')}) but "
                   f"its estimate alone {closer}; refining with the estimate alone (strength 0)")
            return decided(True, why, True, strength=0.0)
        if sum(estimate.values()) > refined:
            why = (f"eval-refiner found the refiner's estimate alone {closer}, with its detail on {refined} of "
                   f"{len(estimate)}: {scores('refined')}; refining with the estimate alone (strength 0)")
            return decided(True, why, strength=0.0)
    if report["helpful"]:
        return decided(True, f"eval-refiner found the refiner helps ({scores('refined')}); refining")
    why = (
        f"eval-refiner found the refiner makes held-out audio worse ({scores('refined')}, {run.refiner.eval_report}); "
        "the samples get no refined.wav (sample.refine=always applies it anyway)"
    )
    return decided(False, why, True)


def sample_tracks(recipe: RecipeConfig, run: Run, request: SampleRequest) -> list[SampleFolder]:
    """Generate `request.n` tracks and write RUN/samples/<name>_<k>/; returns the folders."""
    if not 0 < request.seconds < math.inf or request.n < 1:
        raise UserError(f"Asked for {request.n} samples of {request.seconds} s; both must be positive and finite (SECONDS, N).")
    settings = request.settings(recipe.sample)
    device = resolve_device(request.device)
    vqvae = run.load_vqvae(device)
    fingerprint = vqvae.fingerprint()
    sr, hops = vqvae.sample_rate, vqvae.hop_lengths
    top = run.load_prior(2, device, fingerprint, settings.checkpoint)
    levels = [2, 1] if request.fast else [2, 1, 0]
    upsamplers = {}
    for level in levels[1:]:
        if not run.prior(level).has_checkpoint():
            hint = " or sample with --fast (stops at level 1)" if level == 0 else ""
            raise UserError(f"No level-{level} upsampler in '{run.prior(level).path}'; train it (make upsamplers){hint}.")
        upsamplers[level] = run.load_prior(level, device, fingerprint, settings.checkpoint)
    refiner = None
    applied, strength, why = refine_decision(run, settings)
    if applied:
        refiner = run.load_refiner(device, fingerprint, settings.checkpoint)
        if settings.refine_chunk_length is not None:
            refiner.check_chunk(settings.refine_chunk_length, "sample.refine_chunk_length")
        if refiner.config.cond_level not in levels:
            raise UserError(
                f"The refiner refines level-{refiner.config.cond_level} audio, which --fast does not make; drop --fast."
            )
    if top.prior.cfg.labels and top.vocab.genres:  # unknown names fail before any work
        for genre in filter(None, (request.genre, request.morph_to)):
            top.vocab.genre_id(genre)
        if request.artist:
            top.vocab.artist_id(request.artist)
        if not request.genre:
            log.info("no genre given: using '%s' (known: %s)", top.vocab.genres[0], ", ".join(top.vocab.genres))

    name = request.name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folders = [run.sample(f"{name}_{k}") for k in range(request.n)]
    taken = [f.path for f in folders if f.path.exists()]
    if taken:
        raise UserError(f"'{taken[0]}' already exists; pick another --name (nothing is overwritten).")

    tokens = math.ceil(request.seconds * sr / hops[2])
    total = tokens * hops[2]
    generator = torch.Generator(device).manual_seed(request.seed)
    timings: dict[str, float] = {}
    codes: dict[int, torch.Tensor] = {}
    segments: dict[str, int] = {}  # each upsampler's, side by side
    clock = time.perf_counter()
    labels = _labels(top, request, request.genre, total, request.n)
    if labels is not None:
        top.prior.y_emb.check(labels)  # a length outside the timing embeddings fails before any sampling
    if request.morph_to and labels is not None:
        labels = morph(labels, _labels(top, request, request.morph_to, total, request.n), tokens)
    prime = None if request.prime is None else _top_codes(vqvae, request.prime, "Prime", tokens).repeat(request.n, 1)
    character, character_source = _character(top, vqvae, request, prime, generator)
    guidance = dict(character=character, guidance=settings.character_guidance) if character is not None else {}
    if character is None and settings.character_guidance != 1:
        log.warning("sample.character_guidance is %g, but this top prior has no track character: ignored", settings.character_guidance)
    options = dict(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p, generator=generator, progress=True)
    with autocast(device):
        codes[2] = sample_codes(
            top.prior, request.n, tokens, labels=labels, prime=prime, hop_fraction=settings.hop_fraction_level2,
            **guidance, **options,
        )
        timings["level2"] = time.perf_counter() - clock
        for level, loaded in upsamplers.items():
            clock = time.perf_counter()
            length = tokens * hops[2] // hops[level]
            up_labels = _labels(loaded, request, request.genre, total, request.n)
            asked = settings.upsampler_segments
            if asked == "auto":
                asked = auto_segments(request.n, length, loaded.prior.cfg.n_ctx, device)
            segments[f"level{level}"] = len(plan_segments(loaded.prior, length, asked, settings.upsampler_overlap)[0])
            codes[level] = sample_codes(
                loaded.prior, request.n, length, labels=up_labels, upper_codes=codes[level + 1],
                hop_fraction=settings.hop_fraction(level), segments=asked, overlap=settings.upsampler_overlap, **options,
            )
            timings[f"level{level}"] = time.perf_counter() - clock

    audio: dict[str, torch.Tensor] = {}
    clock = time.perf_counter()
    for level in levels:
        audio[f"level{level}"] = vqvae.decode_long(codes[level], level)[:, :, : round(request.seconds * sr)]
    timings["decode"] = time.perf_counter() - clock
    if refiner is not None:
        clock = time.perf_counter()
        audio["refined"] = refine(
            refiner, audio[f"level{refiner.config.cond_level}"], settings.refine_steps,
            settings.refine_strength if strength is None else strength,
            seed=request.seed, chunk_length=settings.refine_chunk_length, progress=True,
        )
        timings["refine"] = time.perf_counter() - clock

    for k, folder in enumerate(folders):
        folder.path.mkdir(parents=True)
        for stage, track in audio.items():
            _write_wav(folder.audio(stage), track[k, 0].cpu(), sr)
        np.save(folder.codes, codes[2][k].cpu().numpy().astype(np.int32))
        meta = {
            "recipe": recipe.name,
            "seconds": request.seconds,
            "seed": request.seed,
            "index": k,
            "genre": request.genre,
            "artist": request.artist,
            "morph_to": request.morph_to,
            "prime": None if request.prime is None else str(request.prime),
            "character": character_source,
            "fast": request.fast,
            "refined": why,
            "settings": dataclasses.asdict(settings),
            "checkpoints": {
                "vqvae": str(run.vqvae.checkpoint),
                **{f"prior_level{lv}": {"path": str(p.path), "step": p.step} for lv, p in ((2, top), *upsamplers.items())},
                "refiner": None if refiner is None else str(run.refiner.weights(settings.checkpoint)),
            },
            "device": str(device),
            "seconds_per_stage": {k: round(v, 2) for k, v in timings.items()},
            "upsampler_segments": segments,
        }
        with atomic_path(folder.meta) as tmp:
            tmp.write_text(json.dumps(meta, indent=2))
    log.info(
        "wrote %d sample(s) of %.1f s to %s (%s)", request.n, request.seconds, run.samples,
        ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
    )
    return folders


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=("name", "sample"))
    add_run_arguments(parser, "reads RUN/vqvae, RUN/prior_level*, RUN/refiner, writes RUN/samples/<name>_<k>")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each track")
    parser.add_argument("--n", type=int, default=1, help="tracks to generate (one batch)")
    parser.add_argument("--genre", help="genre label (default: the prior's first genre)")
    parser.add_argument("--artist", help="artist label (default: the prior's first artist)")
    parser.add_argument("--morph-to", help="a second genre the track morphs into by its end")
    parser.add_argument("--prime", type=Path, help="audio file whose opening every track continues")
    like = parser.add_mutually_exclusive_group()
    like.add_argument("--like", type=Path, help="a recording whose track character every track takes (a top prior with one)")
    like.add_argument("--like-mix", type=Path, nargs=2, metavar=("A", "B"), help="tracks between the characters of two recordings")
    parser.add_argument("--guidance", type=float, dest="character_guidance",
                        help="track-character guidance, 1 = plain (default: sample.character_guidance)")
    parser.add_argument("--temperature", type=float, help="softmax temperature (default: sample.temperature)")
    parser.add_argument("--top-k", type=int, help="keep the k likeliest codes (default: sample.top_k)")
    parser.add_argument("--top-p", type=float, help="keep the codes holding this mass (default: sample.top_p)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="stop at level 1: skip the slow level-0 upsampler")
    parser.add_argument("--refine-steps", type=int, help="refiner steps (default: sample.refine_steps, else the refiner's)")
    parser.add_argument("--refine-strength", type=float, help="refiner strength in [0, 1] (default: sample.refine_strength, else the refiner's)")
    parser.add_argument("--name", help="sample folder prefix (default: a timestamp)")


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args)
    fields = {f.name for f in dataclasses.fields(SampleRequest)} - {"name", "like"}
    like = tuple(args.like_mix or ([args.like] if args.like else []))
    request = SampleRequest(**{k: getattr(args, k) for k in fields}, name=args.name, like=like)
    sample_tracks(recipe, Run(args.run), request)
    return 0
