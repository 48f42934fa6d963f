"""Read OpenAI Jukebox's released checkpoints (files the user brings) into our models.

The `import-jukebox` stage (`stages.import_jukebox`) writes what this returns into a run folder.

OpenAI's files are full pickles holding their own classes (`jukebox.hparams.Hyperparams`), so they
cannot be read with `weights_only=True`, and a plain unpickle would import and run whatever the file
names. `load_openai_checkpoint` instead unpickles with an allow-list: torch's tensor-rebuilding
functions, storages, dtypes, OrderedDict and numpy scalars are resolved; every other class is
replaced by an inert dict that keeps the data (`ForeignObject`). No module named by the file is
imported and nothing from it runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import os
import pickle
import re
import types
from pathlib import Path
from typing import Any

import torch

from jukebox_lite.core.checkpoint import load_state_checked
from jukebox_lite.core.config import VQVAEConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.core.config import PriorConfig
from jukebox_lite.models.prior import Prior
from jukebox_lite.models.vqvae import VQVAE

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Restricted unpickling


class ForeignObject(dict):
    """Stands in for a class the pickle names but we refuse to import; its data ends up as dict items.

    `pickled_as` ("module.Name") is set on the per-class subclass; constructor arguments, if any, are
    kept under '__args__', a non-dict state under '__state__'.
    """

    pickled_as = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        if args or kwargs:
            self["__args__"] = list(args) + ([kwargs] if kwargs else [])

    def __setstate__(self, state: Any) -> None:
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        for part in parts:
            if isinstance(part, dict):
                self.update(part)
            elif part is not None:
                self["__state__"] = part


# (module, name) the unpickler may resolve; each builds data only (tensors, containers, scalars).
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.nn.parameter", "Parameter"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("builtins", "object"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("copyreg", "_reconstructor"),  # protocol-0/1 objects: only allow-listed classes reach it
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
}
_stand_ins: dict[str, type] = {}


def _stand_in(qualified: str) -> type:
    if qualified not in _stand_ins:
        _stand_ins[qualified] = type(qualified.rsplit(".", 1)[-1], (ForeignObject,), {"pickled_as": qualified})
    return _stand_ins[qualified]


def _find_class(module: str, name: str) -> Any:
    if (module, name) in _ALLOWED_GLOBALS:
        if module.startswith("numpy."):
            module = "numpy._core.multiarray" if hasattr(importlib.import_module("numpy"), "_core") else module
        return getattr(importlib.import_module(module), name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return _stand_in(f"{module}.{name}")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _find_class(module, name)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# torch.load takes a "pickle module"; this one only knows the restricted unpickler.
_restricted_pickle = types.ModuleType("jukebox_lite_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler
_restricted_pickle.load = _restricted_load
_restricted_pickle.__dict__.update(
    {name: getattr(pickle, name) for name in ("UnpicklingError", "HIGHEST_PROTOCOL", "DEFAULT_PROTOCOL")}
)


def _plain(value: Any) -> Any:
    """Stand-ins, OrderedDicts, tuples and numpy scalars → builtins that a weights_only load accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if type(value) in (str, int, float, bool, type(None)) or isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "tolist"):  # numpy scalars (even float64, a float subclass) and arrays
        return value.tolist()
    return repr(value)


def load_openai_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """OpenAI's `{'hps', 'model', ...}` pickle → (hps as a plain dict, state dict without 'module.').

    Nothing from the file is imported or run (see the module docstring). Anything that is not such
    a checkpoint is one UserError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"OpenAI checkpoint '{path}' does not exist; download it first (e.g. 5b/vqvae.pth.tar).")
    try:
        obj = torch.load(path, map_location="cpu", pickle_module=_restricted_pickle, weights_only=False)
    except Exception as e:  # any corruption or foreign format ends here
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"'{path}' is not a readable OpenAI Jukebox checkpoint ({reason}).") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise UserError(f"'{path}' is not an OpenAI Jukebox checkpoint: it has no 'model' state dict.")
    state = {}
    for key, value in obj["model"].items():
        shown = str(key)[:80]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"'{path}' is not an OpenAI Jukebox checkpoint: 'model' entry '{shown}' is not a tensor.")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"'{path}' weight '{shown}' holds NaN or infinite values; the file is damaged.")
        state[str(key).removeprefix("module.")] = value
    hps = _plain(obj.get("hps") or {})
    if not isinstance(hps, dict):
        raise UserError(f"'{path}' holds hyperparameters that are not a table (a {type(hps).__name__}); the file is damaged.")
    return hps, state


# ----------------------------------------------------------------------------------------------
# VQ-VAE

# our VQVAEConfig field ← OpenAI hps key
_VQVAE_HPS = {
    "sample_rate": "sr",
    "sample_length": "sample_length",
    "levels": "levels",
    "downs_t": "downs_t",
    "strides_t": "strides_t",
    "emb_width": "emb_width",
    "l_bins": "l_bins",
    "width": "width",
    "depth": "depth",
    "m_conv": "m_conv",
    "dilation_growth_rate": "dilation_growth_rate",
    "dilation_cycle": "dilation_cycle",
    "multipliers": "hvqvae_multipliers",
    "reverse_decoder_dilation": "vqvae_reverse_decoder_dilation",
    "mu": "l_mu",
    "commit": "commit",
    "revival_threshold": "revival_threshold",
    "linf_k": "linf_k",
    "multispectral_weight": "multispectral",
    "stft_n_fft": "multispec_loss_n_fft",
    "stft_hop_length": "multispec_loss_hop_length",
    "stft_window_size": "multispec_loss_window_size",
}


def _shape_facts(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture read from the weights themselves, for hps that a file leaves out."""
    levels = sum(1 for key in state if re.fullmatch(r"bottleneck\.level_blocks\.\d+\.k", key))
    l_bins, emb_width = state["bottleneck.level_blocks.0.k"].shape
    top = f"encoders.{levels - 1}.level_blocks"
    downs_t = [
        sum(1 for key in state if re.fullmatch(rf"{top}\.{i}\.model\.\d+\.0\.weight", key)) for i in range(levels)
    ]
    strides_t = [state[f"{top}.{i}.model.0.0.weight"].shape[-1] // 2 for i in range(levels)]
    widths, depths = [], []
    for level in range(levels):
        first = f"encoders.{level}.level_blocks.0.model.0"
        widths.append(state[f"{first}.0.weight"].shape[0])
        depths.append(sum(1 for key in state if re.fullmatch(rf"{first}\.1\.model\.\d+\.model\.1\.weight", key)))
    width = math.gcd(*widths)
    hidden = state["encoders.0.level_blocks.0.model.0.1.model.0.model.1.weight"].shape[0]
    return {
        "levels": levels,
        "l_bins": l_bins,
        "emb_width": emb_width,
        "downs_t": downs_t,
        "strides_t": strides_t,
        "width": width,
        "multipliers": [w // width for w in widths],
        "depth": depths[0] * width // widths[0],
        "m_conv": hidden / widths[0],
    }


def vqvae_config_from_openai(hps: dict, state: dict[str, torch.Tensor], source: str) -> VQVAEConfig:
    """Our config from OpenAI's hps where the file has them, else from the weights' shapes, else
    the released defaults. The shapes are then checked key by key when the weights load."""
    try:
        facts = _shape_facts(state)
    except KeyError as e:
        raise UserError(f"'{source}' is not a Jukebox VQ-VAE checkpoint: it lacks the key {e}.") from None
    values = dataclasses.asdict(VQVAEConfig())
    values.update(facts)
    for ours, theirs in _VQVAE_HPS.items():
        if hps.get(theirs) is not None:
            values[ours] = hps[theirs]
    try:
        loss_fn = hps.get("loss_fn", "lmix")
        if loss_fn == "l2":
            values["l2_weight"], values["linf_weight"] = 1.0, 0.0
        elif loss_fn == "lmix":
            values["l2_weight"] = float(hps.get("lmix_l2", values["l2_weight"]))
            values["linf_weight"] = float(hps.get("lmix_linf", values["linf_weight"]))
        else:
            log.warning("%s was trained with loss_fn %r; fine-tuning uses L2 + L-inf instead", source, str(loss_fn)[:40])
        if not values["sample_length"]:  # OpenAI leaves 0 when sample_length_in_seconds was given
            values["sample_length"] = VQVAEConfig.sample_length
        for key in ("downs_t", "strides_t", "multipliers", "stft_n_fft", "stft_hop_length", "stft_window_size"):
            values[key] = [int(v) for v in values[key]]
        values["sample_rate"], values["m_conv"] = int(values["sample_rate"]), float(values["m_conv"])
        top_hop = math.prod(s**d for s, d in zip(values["strides_t"], values["downs_t"]))
        values["sample_length"] = max(1, int(values["sample_length"]) // top_hop) * top_hop
        cfg = VQVAEConfig(**values)
        cfg.validate()
    except (TypeError, ValueError, OverflowError, UserError) as e:
        raise UserError(f"'{source}' has VQ-VAE hyperparameters jukebox-lite cannot use ({str(e)[:200]}).") from None
    # the weights fix the architecture: hyperparameters that say otherwise would build another model
    # (width 10**7 once tried to allocate petabytes) before the shapes were compared
    def layout(v: dict) -> dict:  # what the weights' shapes fix: width x multiplier is one number per level
        return {"levels": v["levels"], "l_bins": v["l_bins"], "emb_width": v["emb_width"], "downs_t": list(v["downs_t"]),
                "strides_t": list(v["strides_t"]), "widths": [v["width"] * m for m in v["multipliers"]],
                "depths": [v["depth"] * m for m in v["multipliers"]], "m_conv": float(v["m_conv"])}

    said, weights = layout(values), layout(facts)
    disagree = [f"{k} {said[k]!r} (the weights: {weights[k]!r})" for k in weights if said[k] != weights[k]]
    if disagree:
        raise UserError(f"'{source}' has hyperparameters its weights contradict: {'; '.join(disagree)[:300]}.")
    return cfg


def load_openai_vqvae(path: str | os.PathLike) -> tuple[VQVAE, dict]:
    """OpenAI's vqvae.pth.tar → (our VQVAE, OpenAI's hparams as plain data).

    Every OpenAI key must match ours in name and shape. The codebooks' EMA statistics, which
    OpenAI's files lack, are set to a steady state around the imported codebooks (as OpenAI does
    when it resumes training), and the data bandwidth is taken from the hps when present.
    """
    source = str(path)
    hps, state = load_openai_checkpoint(path)
    if "bottleneck.level_blocks.0.k" not in state:
        raise UserError(
            f"'{source}' holds no VQ-VAE weights (no key 'bottleneck.level_blocks.0.k'); pass OpenAI's vqvae.pth.tar."
        )
    cfg = vqvae_config_from_openai(hps, state, source)
    model = VQVAE(cfg)
    expected = set(model.state_dict()) - set(model.extra_state_keys())
    missing = sorted(expected - set(state))
    if missing:
        raise UserError(f"'{source}' lacks the key '{missing[0]}' that its hyperparameters imply; the file is incomplete.")
    load_state_checked(model, state, source, strict=False)
    bandwidth = hps.get("bandwidth")
    usable = isinstance(bandwidth, dict) and all(
        isinstance(bandwidth.get(k), (int, float)) and 0 < bandwidth[k] < math.inf for k in ("l1", "l2", "spec")
    )
    if usable:
        model.set_bandwidth(bandwidth)
    else:
        log.warning("%s has no usable data bandwidth (positive, finite); compute it from your data before fine-tuning", source)
    for level, block in enumerate(model.bottleneck.level_blocks):
        block.reset_ema(cfg.sample_length // model.hop_lengths[level])
    return model.eval(), hps


# ----------------------------------------------------------------------------------------------
# Priors


# OpenAI's hparams of the released priors that a state dict cannot tell (jukebox/hparams.py).
_OPENAI_DEFAULTS = dict(
    heads=1, attn_order=2, blocks=128, m_attn=0.25, init_scale=1.0, merged_decoder=False, sr=44100,
    t_bins=128, max_bow_genre_size=5, min_duration=60.0, max_duration=600.0,
    cond_dilation_growth_rate=3, cond_dilation_cycle=8, cond_res_scale=False, cond_zero_out=False, cond_m_conv=1.0,
)
_OPENAI_LEVEL_DEFAULTS = {1: {"cond_res_scale": True}}  # upsampler_level_1 differs from level 0 in this alone
_OPENAI_HOPS = {2: 128, 1: 32, 0: 8}  # released VQ-VAE: downs_t (3, 2, 2), strides 2

_UPSAMPLER = dict(
    n_ctx=8192, width=1920, depth=72, heads=1, attn_order=2, blocks=128, init_scale=0.4, max_bow_genre_size=5,
    cond_dilation_growth_rate=3, cond_dilation_cycle=8, cond_zero_out=False, cond_m_conv=1.0,
)
# OpenAI's registered priors (jukebox/hparams.py; ../shared/jukebox-format/released_models.tsv), in its hps
# names. A released file may hold weights alone: level, n_ctx, width and depth (read from the weights)
# recognise the layout, and the rest (heads, attention order, blocks, merged decoder...) is taken from here.
RELEASED_PRIORS: dict[str, dict[str, Any]] = {
    "prior_5b": dict(
        level=2, n_ctx=8192, width=4800, depth=72, heads=8, attn_order=2, blocks=128, init_scale=0.1,
        max_bow_genre_size=5, min_duration=60.0, max_duration=600.0, merged_decoder=True,
    ),
    "upsampler_level_1": dict(level=1, cond_res_scale=True, **_UPSAMPLER),
    "upsampler_level_0": dict(level=0, cond_res_scale=False, **_UPSAMPLER),
    # one transformer over [384 lyric characters, 6144 codes], one vocabulary of 79 characters + 2048 codes
    "prior_1b_lyrics": dict(
        level=2, n_ctx=6144, width=2048, depth=72, heads=2, attn_order=12, blocks=64, init_scale=0.2,
        max_bow_genre_size=1, min_duration=17.84, max_duration=600.0, merged_decoder=False,
        use_tokens=True, single_enc_dec=True, n_tokens=384, n_vocab=79,
    ),
}
# the released prior with a separate lyrics encoder, recognised so that it is refused by name
ENCODER_LYRICS_PRIORS = {"prior_5b_lyrics": dict(level=2, n_ctx=8192, width=4800, depth=79)}


def released_layout(sd: dict, level: int) -> str | None:
    """The registered prior whose level and weight sizes (positions, width, depth) `sd` has, if any."""
    sizes = _sizes(sd)
    for name, layout in {**RELEASED_PRIORS, **ENCODER_LYRICS_PRIORS}.items():
        positions = layout["n_ctx"] + layout.get("n_tokens", 0)
        if layout["level"] == level and (sizes["n_ctx"], sizes["width"], sizes["depth"]) == (positions, layout["width"], layout["depth"]):
            return name
    return None


def _sizes(sd: dict) -> dict[str, int]:
    """What the weights themselves say of a prior's size."""
    if "prior.x_emb.weight" not in sd or "prior.pos_emb.pos_emb" not in sd:
        raise UserError("This OpenAI checkpoint is not a prior (it has no prior.x_emb and prior.pos_emb weights).")
    layers = [int(k.split(".")[3]) for k in sd if k.startswith("prior.transformer._attn_mods.")]
    return {
        "bins": sd["prior.x_emb.weight"].shape[0], "width": sd["prior.x_emb.weight"].shape[1],
        "n_ctx": sd["prior.pos_emb.pos_emb"].shape[0], "depth": 1 + max(layers, default=-1),
    }


def _check_level(sd: dict, level: int) -> None:
    upsampler = any(k.startswith("conditioner_blocks.") for k in sd)
    if (level < 2) != upsampler:
        what = "an upsampler" if upsampler else "a top-level prior"
        raise UserError(f"This OpenAI checkpoint holds {what}, not a level-{level} prior; pass it as the matching level.")


def openai_prior_hps(hps: dict, sd: dict, level: int, layout: str | None, source: str) -> dict:
    """The hps a prior is built with: the file's own; where it carries none, those of the registered
    layout named by `layout` (--openai-model) or recognised from the weights' sizes; else an error."""
    given = {k: v for k, v in dict(hps or {}).items() if v is not None}
    if layout is not None and layout not in RELEASED_PRIORS:
        known = ", ".join(RELEASED_PRIORS)
        raise UserError(f"--openai-model {layout!r} is not one of OpenAI's released plain priors ({known}).")
    sizes = _sizes(sd)
    _check_level(sd, level)
    name = layout or (None if given else released_layout(sd, level))
    if name in ENCODER_LYRICS_PRIORS or (given.get("use_tokens") and not given.get("single_enc_dec")):
        raise UserError(
            f"'{source}' is a lyrics prior with a separate lyrics encoder (OpenAI's 5b_lyrics), which jukebox-lite does "
            "not read; import prior_1b_lyrics or prior_5b instead."
        )
    if name is None and not given:
        raise UserError(
            f"'{source}' carries no hyperparameters and its sizes (width {sizes['width']}, depth {sizes['depth']}, "
            f"n_ctx {sizes['n_ctx']}) match none of OpenAI's released level-{level} priors; pass --openai-model NAME "
            f"({', '.join(n for n, r in RELEASED_PRIORS.items() if r['level'] == level)}) to say whose settings it has."
        )
    registered = {k: v for k, v in RELEASED_PRIORS.get(name, {}).items() if k not in ("n_ctx", "width", "depth")}
    if name is not None and registered["level"] != level:
        raise UserError(f"--openai-model {name} is a level-{registered['level']} prior, but '{source}' was given as level {level}.")
    if name is not None and not given:
        log.info("%s carries no hyperparameters: using OpenAI's registered %s", source, name)
    return {**registered, **given, "level": level}


def prior_config_from_openai(hps: dict, sd: dict) -> PriorConfig:
    """Our PriorConfig for an OpenAI prior: sizes from the weights (state dict `sd`), the rest from its hparams.

    Unknown hparams fall back to those of OpenAI's released models. Lyrics priors (prime/encoder
    weights) are not supported: they raise a UserError.
    """
    given = {k: v for k, v in dict(hps or {}).items() if v is not None}
    upsampler = any(k.startswith("conditioner_blocks.") for k in sd)
    try:
        return _prior_config(given, sd, upsampler)
    except (TypeError, ValueError, OverflowError, KeyError) as e:
        raise UserError(f"This OpenAI prior's hyperparameters cannot be used ({type(e).__name__}: {str(e)[:200]}).") from None


def _prior_config(given: dict, sd: dict, upsampler: bool) -> PriorConfig:
    level = int(given.get("level", 1 if upsampler else 2))
    if level not in _OPENAI_HOPS:
        raise ValueError(f"level {level} is not 0, 1 or 2")
    hps = {**_OPENAI_DEFAULTS, **_OPENAI_LEVEL_DEFAULTS.get(level, {}), **given}
    if any(k.startswith(("prime_", "prior.transformer._attn_mods.0.attn.c_enc_kv")) for k in sd):
        raise UserError("This OpenAI checkpoint is a lyrics prior with a lyrics encoder (5b_lyrics), which jukebox-lite does not read.")
    vocabulary, width, positions, depth = (_sizes(sd)[k] for k in ("bins", "width", "n_ctx", "depth"))
    # 1b_lyrics (single_enc_dec): lyric characters first in the vocabulary and in the window
    n_tokens, n_vocab = (int(hps.get(k, 0)) for k in ("n_tokens", "n_vocab")) if hps.get("single_enc_dec") else (0, 0)
    bins, n_ctx = vocabulary - n_vocab, positions - n_tokens
    n_state = sd["prior.transformer._attn_mods.0.attn.c_attn.w"].shape[1] // 3
    hidden = sd["prior.transformer._attn_mods.0.mlp.c_fc.w"].shape[1]
    _check_level(sd, level)
    labels = "y_emb.artist_emb.emb.weight" in sd
    fields: dict = dict(
        level=level, n_ctx=n_ctx, width=width, depth=depth, heads=int(hps["heads"]), attn_order=int(hps["attn_order"]),
        blocks=int(hps["blocks"]), m_attn=n_state / width, m_mlp=hidden / width, init_scale=float(hps["init_scale"]),
        bins=bins, merged_decoder=bool(hps["merged_decoder"]), hop_length=_OPENAI_HOPS[level], labels=labels,
        n_tokens=n_tokens, n_vocab=n_vocab,
        sample_rate=int(hps["sr"]), min_duration=float(hps["min_duration"]), max_duration=float(hps["max_duration"]),
    )
    if labels:
        fields.update(
            n_genres=sd["y_emb.bow_genre_emb.emb.weight"].shape[0],
            n_artists=sd["y_emb.artist_emb.emb.weight"].shape[0],
            max_bow_genre_size=int(hps["max_bow_genre_size"]),
        )
        if "y_emb.total_length_emb.emb.weight" in sd:
            fields["t_bins"] = sd["y_emb.total_length_emb.emb.weight"].shape[0]
    if upsampler:
        prefix = "conditioner_blocks.0.cond.model."
        steps = sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)} - {0})
        first = f"{prefix}1.1.weight"
        units = {k.split(".")[7] for k in sd if k.startswith(f"{prefix}1.0.")}
        fields.update(
            cond_down_t=len(steps),
            cond_stride_t=sd[first].shape[2] // 2,
            cond_width=sd[f"{prefix}0.weight"].shape[0],
            cond_depth=len(units),
            cond_c_res=int(any(k.startswith(f"{prefix}1.0.blocks.") for k in sd)),
            cond_m_conv=float(hps["cond_m_conv"]),
            cond_dilation_growth_rate=int(hps["cond_dilation_growth_rate"]),
            cond_dilation_cycle=hps["cond_dilation_cycle"],
            cond_zero_out=bool(hps["cond_zero_out"]),
            cond_res_scale=bool(hps["cond_res_scale"]),
        )
    cfg = PriorConfig(**fields)
    cfg.validate("imported prior")
    return cfg


def prior_from_openai(hps: dict, sd: dict) -> Prior:
    """Build our Prior from an OpenAI prior's hparams and state dict (keys are the same)."""
    prior = Prior(prior_config_from_openai(hps, sd))
    if prior.prior.tied and "prior.x_out.weight" in sd and not torch.equal(sd["prior.x_out.weight"], sd["prior.x_emb.weight"]):
        raise UserError("The OpenAI checkpoint has an untied output layer; import it with merged_decoder=True (the 5b top prior).")
    load_state_checked(prior, {k: v.float() for k, v in sd.items()}, "OpenAI checkpoint")
    return prior.eval()


def load_openai_prior(path: str | os.PathLike, level: int, layout: str | None = None) -> Prior:
    """An OpenAI prior checkpoint (e.g. 5b/prior_level_1.pth.tar) of `level` → our Prior, via the safe
    loader; `layout` names the registered prior whose settings a file without hps has (see openai_prior_hps)."""
    hps, state_dict = load_openai_checkpoint(path)
    return prior_from_openai(openai_prior_hps(hps, state_dict, level, layout, str(path)), state_dict)
