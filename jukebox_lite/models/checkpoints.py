"""Our checkpoint files ↔ the models: each loader rebuilds a model from the config its checkpoint
holds, loads its weights (the EMA ones, what sampling uses, where there are any) and returns it in
eval mode. The file format itself (kinds, atomic writes, safe loading) is `core.checkpoint`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from jukebox_lite.core.atomic import file_sha256
from jukebox_lite.core.checkpoint import load_checkpoint, load_state_checked, read_shards, resolve_checkpoint, save_checkpoint
from jukebox_lite.core.config import PriorConfig, RefinerConfig, VQVAEConfig, section_from_dict
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.prior import Prior
from jukebox_lite.models.refiner import Refiner
from jukebox_lite.models.vqvae import VQVAE
from jukebox_lite.nn.lora import merge_adapters

log = logging.getLogger(__name__)

# keys older prior checkpoints' configs hold that are no longer the prior's (sampling settings, now
# the recipe's sample section)
RETIRED_PRIOR_KEYS = ("hop_fraction",)


# ----------------------------------------------------------------------------------------------
# VQ-VAE


def load_vqvae(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> VQVAE:
    """Our VQ-VAE checkpoint (a run folder or a .pt) → the model in eval mode, EMA weights preferred."""
    state = load_checkpoint(path, kind="vqvae", map_location=str(map_location))
    cfg = section_from_dict(VQVAEConfig, state["config"], "vqvae.")
    cfg.validate()
    model = VQVAE(cfg)
    load_state_checked(model, state["model"], str(path))
    if state.get("ema"):
        load_state_checked(model, state["ema"], f"{path} (ema)", strict=False)
    log.debug("loaded VQ-VAE from %s (%s)", path, dataclasses.asdict(model.config))
    return model.to(map_location).eval()


# ----------------------------------------------------------------------------------------------
# Priors


def load_prior(path: str | os.PathLike, map_location: str = "cpu", use_ema: bool = True) -> Prior:
    """Our prior checkpoint (a run folder or .pt) → Prior in eval mode; EMA weights preferred."""
    path = resolve_checkpoint(path)
    return prior_from_checkpoint(load_checkpoint(path, kind="prior", map_location=map_location), str(path), use_ema)


def prior_from_checkpoint(state: dict, source: str, use_ema: bool = True) -> Prior:
    """A loaded prior checkpoint → Prior in eval mode (for callers that also read its other entries).
    A LoRA fine-tune's checkpoint holds its adapters only: they are applied to its base file (checked
    against the fingerprint it records) and merged, so the prior samples as fast as the base."""
    config = {k: v for k, v in state["config"].items() if k not in RETIRED_PRIOR_KEYS}
    cfg = section_from_dict(PriorConfig, config, "prior.")
    cfg.validate()
    prior = Prior(cfg)
    weights = state.get("ema") if use_ema and state.get("ema") else state["model"]
    if "sharded" in state:  # trained with FSDP: the weights are in its shards
        target = {"model": prior.state_dict()}
        if use_ema and "ema_updates" in state:
            target["ema"] = {name: torch.empty_like(p) for name, p in prior.named_parameters()}
        read_shards(source, state, target)
        prior.load_state_dict(target["model"])
        with torch.no_grad():
            for name, p in prior.named_parameters():
                p.copy_(target.get("ema", {}).get(name, p))
        return prior.eval()
    if "base" not in state:
        load_state_checked(prior, weights, source)
        return prior.eval()
    base_path = adapted_base(state, Path(source))
    base = load_checkpoint(base_path, kind="prior")
    prior.add_adapters(cfg.train.lora)
    # what trained (adapters, embeddings: label tables grown by styles included) over the frozen base
    load_state_checked(prior, {**(base.get("ema") or base["model"]), **weights}, f"{source} over {base_path}")
    del base
    merge_adapters(prior).requires_grad_(True)
    return prior.eval()


def adapted_base(state: dict, source: Path) -> Path:
    """The base file a LoRA checkpoint at `source` adapts (beside it), or one clear error when it is
    missing or is not the file the adapters were trained on."""
    base = state["base"]
    path = source.parent / Path(base["file"]).name
    if not path.is_file():
        raise UserError(f"'{source}' holds LoRA adapters for the prior in '{path}', which is missing; put it back.")
    if file_sha256(path) != base["sha256"]:
        raise UserError(
            f"'{path}' is not the prior the adapters in '{source}' were trained on (its fingerprint changed); put back "
            "the file they adapt, or move both away to fine-tune anew."
        )
    return path


# ----------------------------------------------------------------------------------------------
# Refiner


def save_refiner(path: str | os.PathLike, model: Refiner, ema: dict | None = None, **extra) -> None:
    """Our checkpoint: config, weights, optional EMA weights (what sampling uses), and the fingerprint
    (`VQVAE.fingerprint()`) of the VQ-VAE whose audio the refiner was trained on."""
    if not model.vqvae_fingerprint:
        raise ValueError("the refiner has no vqvae_fingerprint; set it to the VQ-VAE's fingerprint()")
    if ema is not None:
        extra["ema"] = ema
    save_checkpoint(
        path, "refiner", dataclasses.asdict(model.config), model.state_dict(),
        vqvae_fingerprint=model.vqvae_fingerprint, **extra,
    )


def load_refiner(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", vqvae: str | None = None
) -> Refiner:
    """Our refiner checkpoint → the model in eval mode with its EMA weights when it has them.

    `vqvae` is the fingerprint (`VQVAE.fingerprint()`) of the VQ-VAE whose audio will be refined;
    a refiner trained on another VQ-VAE's audio is refused.
    """
    state = load_checkpoint(path, kind="refiner", map_location=str(map_location))
    fingerprint = state.get("vqvae_fingerprint")
    if not isinstance(fingerprint, str):
        raise UserError(f"Refiner checkpoint '{path}' does not record which VQ-VAE it was trained with; retrain it with train-refiner.")
    if vqvae is not None and fingerprint != vqvae:
        raise UserError(
            f"Refiner checkpoint '{path}' was trained on another VQ-VAE's audio (fingerprint {fingerprint}, "
            f"this run's is {vqvae}); train a refiner for this VQ-VAE or use the run it came from."
        )
    if "norm_groups" in state["config"]:
        raise UserError(
            f"Refiner checkpoint '{path}' is the older GroupNorm U-Net, which cannot refine in chunks exactly; "
            "retrain it with train-refiner."
        )
    if "target" in state["config"]:
        raise UserError(
            f"Refiner checkpoint '{path}' is the earlier diffusion-only refiner (no estimator, no loudness "
            "envelope), which made recorded music worse; retrain it with train-refiner."
        )
    cfg = section_from_dict(RefinerConfig, state["config"], "refiner.")
    model = Refiner(cfg, vqvae_fingerprint=fingerprint)
    load_state_checked(model, state["model"], str(path))
    if state.get("ema"):
        load_state_checked(model, state["ema"], f"{path} (ema)")
    return model.to(map_location).eval()
