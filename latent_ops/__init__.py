"""Latent-space editing on a trained run: concepts, expressions, refinement (built in later issues)."""
