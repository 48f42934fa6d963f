"""1-D convolutional building blocks shared by the VQ-VAE and the upsamplers' conditioner.

Attribute names (`model`, `blocks`) and the order of submodules follow OpenAI Jukebox's layout on
purpose: state-dict keys such as `encoders.0.level_blocks.0.model.0.1.model.3.model.1.weight` then
load from OpenAI's released checkpoints without renaming. Every block maps (batch, channels, time)
to (batch, channels', time'); only the strided blocks change the time axis.

Every block also runs in the "time-as-width" layout: (batch, channels, 1, time) in channels-last
memory (`to_time_as_width`), where each convolution runs as the equivalent 2-D one with a (1, k)
kernel. Same parameters, same keys, same function; oneDNN runs that form faster on CPU than its 1-D
convolutions (the released VQ-VAE: training step 1.1–1.3×, encoding 1.5×, decoding 1.9–2.3×;
docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


def to_time_as_width(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T) → (B, C, 1, T) in channels-last memory, the layout the convolutions below run fastest in."""
    return x[:, :, None].contiguous(memory_format=torch.channels_last)


def from_time_as_width(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, T) → (B, C, T), a view (strided: time-major, as channels-last stores it)."""
    return x[:, :, 0]


def _time_as_width_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 1-D kernel (out, in, k) as the (out, in, 1, k) 2-D one, channels-last like the activations."""
    return weight[:, :, None].contiguous(memory_format=torch.channels_last)


def store_kernels_channels_last(module: nn.Module) -> None:
    """Store every conv kernel (out, in, k) of `module` kernel-position-major, so that its (1, k) 2-D
    view is already channels-last and no pass copies it. Shapes, values and state-dict keys stay."""
    for conv in module.modules():
        if isinstance(conv, (Conv1d, ConvTranspose1d)):
            conv.weight.data = conv.weight.data.permute(0, 2, 1).contiguous().permute(0, 2, 1)


class Conv1d(nn.Conv1d):
    """nn.Conv1d that also takes (B, C, 1, T) input, running it as a Conv2d with a (1, k) kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x)
        (stride,), (padding,), (dilation,) = self.stride, self.padding, self.dilation
        return F.conv2d(x, _time_as_width_weight(self.weight), self.bias, (1, stride), (0, padding), (1, dilation), self.groups)


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d that also takes (B, C, 1, T) input, running it as a ConvTranspose2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x)
        (stride,), (padding,), (out_pad,), (dilation,) = self.stride, self.padding, self.output_padding, self.dilation
        return F.conv_transpose2d(
            x, _time_as_width_weight(self.weight), self.bias, (1, stride), (0, padding), (0, out_pad), self.groups, (1, dilation)
        )


class ResConv1DBlock(nn.Module):
    """One residual unit: x + res_scale · Conv1x1(ReLU(DilatedConv3(ReLU(x)))); length is kept.

    `model` holds [ReLU, Conv1d k3, ReLU, Conv1d k1], so the convolutions are `model.1` and `model.3`.
    `zero_out` starts the unit as the identity (last conv zeroed), which deep stacks train better from.
    """

    def __init__(self, channels: int, hidden: int, dilation: int = 1, zero_out: bool = False, res_scale: float = 1.0):
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(),
            Conv1d(channels, hidden, kernel_size=3, padding=dilation, dilation=dilation),
            nn.ReLU(inplace=True),  # on the conv's fresh output: one activation fewer in memory
            Conv1d(hidden, channels, kernel_size=1),
        )
        if zero_out:
            nn.init.zeros_(self.model[-1].weight)
            nn.init.zeros_(self.model[-1].bias)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.model(x)  # a fresh tensor that nothing else needs: add to it in place
        if self.res_scale != 1.0:
            branch = branch.mul_(self.res_scale)
        return branch.add_(x)


class Resnet1D(nn.Module):
    """A stack of `depth` dilated residual units, dilation growth_rate**d (d cycling if `dilation_cycle`).

    Args:
        channels: channels in and out.
        depth: number of residual units.
        m_conv: hidden width of each unit as a multiple of `channels`.
        dilation_growth_rate: dilation of unit d is rate**d (rate**(d % cycle) with a cycle).
        dilation_cycle: restart the dilation pattern every this many units (None: never).
        zero_out: start every unit as the identity.
        res_scale: scale each unit's branch by 1/sqrt(depth).
        reverse_dilation: largest dilation first (OpenAI's decoders do this).
        checkpoint_res: recompute each unit in the backward pass to save memory while training. The
            units are then kept in `blocks` (a ModuleList) instead of `model`, exactly as in OpenAI's
            checkpoints that were trained this way (e.g. the upsamplers' conditioner, cond_c_res=1).
    """

    def __init__(
        self,
        channels: int,
        depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
        reverse_dilation: bool = False,
        checkpoint_res: bool = False,
    ):
        super().__init__()
        hidden = int(m_conv * channels)
        scale = 1.0 / math.sqrt(depth) if res_scale else 1.0
        units = [
            ResConv1DBlock(
                channels,
                hidden,
                dilation=dilation_growth_rate ** (d if dilation_cycle is None else d % dilation_cycle),
                zero_out=zero_out,
                res_scale=scale,
            )
            for d in range(depth)
        ]
        if reverse_dilation:
            units = units[::-1]
        self.checkpoint_res = checkpoint_res
        if checkpoint_res:
            self.blocks = nn.ModuleList(units)
        else:
            self.model = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.checkpoint_res:
            return self.model(x)
        for unit in self.blocks:
            if self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(unit, x, use_reentrant=False)
            else:
                x = unit(x)
        return x


class EncoderConvBlock(nn.Module):
    """Downsample time by stride_t**down_t: `down_t` × [Conv1d(k=2s, stride s, pad s//2), Resnet1D],
    then a Conv1d k3 to `out_channels`.

    (batch, in_channels, T) → (batch, out_channels, T / stride_t**down_t). Submodules live in `model`:
    `model.i.0` is step i's strided conv, `model.i.1` its resnet, `model.{down_t}` the output conv.
    Resnet keyword arguments (m_conv, dilation_growth_rate, ...) are those of `Resnet1D`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        down_t: int,
        stride_t: int,
        width: int,
        depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
        checkpoint_res: bool = False,
    ):
        super().__init__()
        kernel, padding = stride_t * 2, stride_t // 2
        steps = []
        for i in range(down_t):
            steps.append(
                nn.Sequential(
                    Conv1d(in_channels if i == 0 else width, width, kernel, stride_t, padding),
                    Resnet1D(
                        width,
                        depth,
                        m_conv,
                        dilation_growth_rate,
                        dilation_cycle,
                        zero_out=zero_out,
                        res_scale=res_scale,
                        checkpoint_res=checkpoint_res,
                    ),
                )
            )
        if down_t > 0:
            steps.append(Conv1d(width, out_channels, kernel_size=3, padding=1))
        self.model = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DecoderConvBlock(nn.Module):
    """Upsample time by stride_t**down_t: a Conv1d k3 from `latent_channels` to `width`, then `down_t` ×
    [Resnet1D, ConvTranspose1d(k=2s, stride s, pad s//2)], the last one to `out_channels`.

    (batch, latent_channels, T) → (batch, out_channels, T · stride_t**down_t). Submodules live in
    `model`: `model.0` the input conv, `model.{i+1}.0` step i's resnet, `model.{i+1}.1` its transposed
    conv. In OpenAI's code this is `DecoderConvBock(output_emb_width=latent_channels,
    input_emb_width=out_channels, ...)`; the upsamplers' conditioner uses it with both equal to its width.
    """

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        down_t: int,
        stride_t: int,
        width: int,
        depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
        reverse_dilation: bool = False,
        checkpoint_res: bool = False,
    ):
        super().__init__()
        kernel, padding = stride_t * 2, stride_t // 2
        steps: list[nn.Module] = []
        if down_t > 0:
            steps.append(Conv1d(latent_channels, width, kernel_size=3, padding=1))
        for i in range(down_t):
            steps.append(
                nn.Sequential(
                    Resnet1D(
                        width,
                        depth,
                        m_conv,
                        dilation_growth_rate,
                        dilation_cycle,
                        zero_out=zero_out,
                        res_scale=res_scale,
                        reverse_dilation=reverse_dilation,
                        checkpoint_res=checkpoint_res,
                    ),
                    ConvTranspose1d(width, out_channels if i == down_t - 1 else width, kernel, stride_t, padding),
                )
            )
        self.model = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
