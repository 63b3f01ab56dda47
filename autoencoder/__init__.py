"""The adversarially regularised autoencoder: data, networks, losses, training loop.

Example: ``python -m autoencoder.train --preset smoke``
"""
