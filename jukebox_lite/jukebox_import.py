"""Import OpenAI Jukebox's released checkpoints (files the user brings) as jukebox-lite checkpoints.

`jukebox-lite import-jukebox --vqvae vqvae.pth.tar --prior-level-1 prior_level_1.pth.tar ... --out RUN`
writes RUN/vqvae/last.pt and RUN/prior_level<N>/last.pt.

OpenAI's files are full pickles holding their own classes (`jukebox.hparams.Hyperparams`), so they
cannot be read with `weights_only=True`, and a plain unpickle would import and run whatever the file
names. `load_openai_checkpoint` instead unpickles with an allow-list: torch's tensor-rebuilding
functions, storages, dtypes, OrderedDict and numpy scalars are resolved; every other class is
replaced by an inert dict that keeps the data (`ForeignObject`). No module named by the file is
imported and nothing from it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import math
import os
import pickle
import re
import types
from pathlib import Path
from typing import Any, Callable

import torch

from jukebox_lite.checkpoint import CHECKPOINT_NAME, load_state_checked, save_checkpoint
from jukebox_lite.config import VQVAEConfig
from jukebox_lite.errors import UserError
from jukebox_lite.prior import load_openai_prior
from jukebox_lite.vqvae import VQVAE

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
        if not isinstance(value, torch.Tensor):
            raise UserError(f"'{path}' is not an OpenAI Jukebox checkpoint: 'model' entry '{key}' is not a tensor.")
        state[key.removeprefix("module.")] = value
    hps = _plain(obj.get("hps") or {})
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
    loss_fn = hps.get("loss_fn", "lmix")
    if loss_fn == "l2":
        values["l2_weight"], values["linf_weight"] = 1.0, 0.0
    elif loss_fn == "lmix":
        values["l2_weight"] = float(hps.get("lmix_l2", values["l2_weight"]))
        values["linf_weight"] = float(hps.get("lmix_linf", values["linf_weight"]))
    else:
        log.warning("%s was trained with loss_fn %r; fine-tuning uses L2 + L-inf instead", source, loss_fn)
    if not values["sample_length"]:  # OpenAI leaves 0 when sample_length_in_seconds was given
        values["sample_length"] = VQVAEConfig.sample_length
    for key in ("downs_t", "strides_t", "multipliers", "stft_n_fft", "stft_hop_length", "stft_window_size"):
        values[key] = [int(v) for v in values[key]]
    values["m_conv"] = float(values["m_conv"])
    top_hop = math.prod(s**d for s, d in zip(values["strides_t"], values["downs_t"]))
    values["sample_length"] = max(1, int(values["sample_length"]) // top_hop) * top_hop
    try:
        cfg = VQVAEConfig(**values)
        cfg.validate()
    except (TypeError, UserError) as e:
        raise UserError(f"'{source}' has VQ-VAE hyperparameters jukebox-lite cannot use ({e}).") from None
    return cfg


def _output_path(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out_dir) / CHECKPOINT_NAME
    if out.exists() and not overwrite:
        raise UserError(f"'{out}' already exists; remove it or pass --force to replace it.")
    return out


def import_vqvae(path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """OpenAI's vqvae.pth.tar → our checkpoint `out_dir/last.pt`; returns its path.

    Every OpenAI key must match ours in name and shape. The codebooks' EMA statistics, which
    OpenAI's files lack, are set to a steady state around the imported codebooks (as OpenAI does
    when it resumes training), and the data bandwidth is taken from the hps when present.
    """
    source = str(path)
    out = _output_path(out_dir, overwrite)
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
    if isinstance(bandwidth, dict) and all(isinstance(bandwidth.get(k), (int, float)) for k in ("l1", "l2", "spec")):
        model.set_bandwidth(bandwidth)
    else:
        log.warning("%s has no data bandwidth; compute it from your data before fine-tuning", source)
    for level, block in enumerate(model.bottleneck.level_blocks):
        block.reset_ema(cfg.sample_length // model.hop_lengths[level])
    save_checkpoint(
        out,
        kind="vqvae",
        config=dataclasses.asdict(cfg),
        model=model.state_dict(),
        step=0,
        imported_from=os.path.abspath(source),
        openai_hps=hps,
    )
    log.info("imported %s → %s (hop lengths %s)", source, out, model.hop_lengths)
    return out


def import_prior(path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False, *, level: int) -> Path:
    """OpenAI's prior_level_N.pth.tar (an upsampler or a small_prior-format top prior) → `out_dir/last.pt`."""
    out = _output_path(out_dir, overwrite)
    prior = load_openai_prior(path, {"level": level})
    save_checkpoint(
        out,
        kind="prior",
        config=dataclasses.asdict(prior.cfg),
        model=prior.state_dict(),
        step=0,
        imported_from=os.path.abspath(path),
    )
    log.info("imported %s → %s (level %d)", path, out, level)
    return out


# ----------------------------------------------------------------------------------------------
# Command line

# option dest → (importer, sub-folder of the run folder). Importers take (path, out_dir, overwrite).
IMPORTERS: dict[str, tuple[Callable[..., Path], str]] = {
    "vqvae": (import_vqvae, "vqvae"),
    **{f"prior_level_{n}": (functools.partial(import_prior, level=n), f"prior_level{n}") for n in (2, 1, 0)},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vqvae", metavar="PATH", help="OpenAI's vqvae.pth.tar → RUN/vqvae/last.pt")
    for n, what in ((2, "a small_prior-format top prior"), (1, "the level-1 upsampler"), (0, "the level-0 upsampler")):
        parser.add_argument(
            f"--prior-level-{n}", metavar="PATH", help=f"{what} (prior_level_{n}.pth.tar) → RUN/prior_level{n}/last.pt"
        )
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder to write the checkpoints into")
    parser.add_argument("--force", action="store_true", help="replace checkpoints that already exist")


def run(args: argparse.Namespace) -> int:
    chosen = [(dest, *IMPORTERS[dest]) for dest in IMPORTERS if getattr(args, dest, None)]
    if not chosen:
        options = ", ".join("--" + dest.replace("_", "-") for dest in IMPORTERS)
        raise UserError(f"import-jukebox was given no file to import; pass at least one of {options}.")
    for dest, importer, folder in chosen:
        importer(getattr(args, dest), Path(args.out) / folder, overwrite=args.force)
    return 0
