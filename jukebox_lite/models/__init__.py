"""The models: pure `nn.Module`s (VQ-VAE, priors, refiner, Spleeter) with their own shape logic and loss."""
