"""The adversarially regularised autoencoder: its networks, data and training; reading a trained run
(run_folder.py), the project's classifiers (classifier.py), the pure metrics (metrics.py) and the one
command pattern every command line follows (cli.py).

Example: ``python -m autoencoder.train --preset smoke``
"""
