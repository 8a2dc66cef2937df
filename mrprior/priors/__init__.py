"""Image priors: score networks, training, datasets, prior cards, the ℓ1-wavelet prior."""
