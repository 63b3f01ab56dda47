"""Latent-space editing on a trained run: the latent bank, concepts, expressions, the latent prior, compose, report."""
