"""The explorer: a local web page to browse a run's latent space and edit codes (``python -m latent_ops.explore``).

- ``map_cache``: the UMAP map of the bank's codes and its sprite sheets, cached as npz and PNG;
- ``session``: the run opened once, and what the page asks of it (render, upload, save);
- ``composing``: composes of a small pool in a background thread, with their progress;
- ``server``: the Starlette app that translates requests into those functions;
- ``export``: the map with its hover thumbnails as one self-contained HTML file;
- ``static/``: the page (plain HTML, CSS and JavaScript, nothing from a CDN).
"""
