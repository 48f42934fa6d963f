"""Neural-network building blocks shared by the models (VQ-VAE, priors' conditioners)."""

from jukebox_lite.nn.conv import DecoderConvBlock, EncoderConvBlock, ResConv1DBlock, Resnet1D

__all__ = ["DecoderConvBlock", "EncoderConvBlock", "ResConv1DBlock", "Resnet1D"]
