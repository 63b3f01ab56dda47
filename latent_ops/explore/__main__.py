"""``python -m latent_ops.explore``: serve the explorer page for a run, or ``--export`` its map as one HTML file.

The run is opened once (networks, bank, directions), its map and sprite sheets are read from the cache folder (or
made once, about a minute for 10,000 codes on 2 CPU cores), then a local server answers the page at
http://127.0.0.1:PORT/ (``--port``: 8000 by default, else the next free port; 0: any free port). It works offline
with the shipped model and no CIFAR-10: the map is made of the codes the model carries; with ``--data`` present,
composes also measure uniqueness against the training images.

Examples:
    python -m latent_ops.explore --run models/pegasus-cifar10
    python -m latent_ops.explore --run models/pegasus-cifar10 --export outputs/explore/map.html
"""
from __future__ import annotations

import errno
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from autoencoder.cifar10 import CACHE_FOLDER, DATA_FOLDER
from autoencoder.cli import ConfigError, check_ranges, check_writable, dataclass_from_flags, run_cli, save_config

PORTS_TRIED = 50  # from --port upwards
WARM_DELAY = 4.0  # seconds after serving before composes' networks and data are opened: the first page loads first


@dataclass
class ExploreConfig:
    run: str = ""  # run folder; empty: the newest trained run in outputs/runs, else the shipped model
    data: str = DATA_FOLDER  # CIFAR-10 for composes' uniqueness (skipped when absent)
    cache_dir: str = CACHE_FOLDER  # the map and sprite sheets are cached in CACHE/explore/
    out: str = "outputs/explore"  # saves go into new folders here
    host: str = "127.0.0.1"  # the address served; another than 127.0.0.1 lets other machines in
    port: int = 8000  # the first port tried (the next free one is taken); 0: any free port
    split: str = "test"  # the bank split mapped
    points: int = 0  # codes mapped (0: every code of the split)
    seed: int = 0  # UMAP's random_state and the draw of --points
    neighbours: int = 15  # UMAP's n_neighbors
    min_dist: float = 0.1  # UMAP's min_dist
    pool: int = 64  # candidates of a compose from the page
    kept: int = 16  # images a compose shows
    precision: str = "auto"  # auto (bf16 where native), bf16 or fp32
    export: str = ""  # write the map with hover thumbnails to this .html file and stop (no server)


EXPLORE_RANGES = {"port": (0, 65535), "points": (0, 10**6), "seed": (0, 2**31 - 1), "neighbours": (2, 200),
                  "min_dist": (0, 10), "pool": (1, 4096), "kept": (1, 64)}


def bind(host: str, first: int) -> socket.socket:
    """A listening socket on ``host`` at ``first`` or the next free port (``first`` 0: any free port)."""
    ports = [0] if first == 0 else range(first, min(first + PORTS_TRIED, 65536))
    for port in ports:
        # IPPROTO_TCP named, so that asyncio turns Nagle's algorithm off on each connection (TCP_NODELAY): with a
        # protocol of 0 it leaves it on, and every answer's body waited ~40 ms for the browser's delayed ACK
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)
            return sock
        except OSError as error:
            sock.close()
            if error.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise ConfigError(f"--host {host}: cannot listen there ({error.strerror}); give 127.0.0.1 or an "
                                  f"address of this machine") from None
    raise ConfigError(f"ports {first} to {first + PORTS_TRIED - 1} are all taken; pass --port with another number "
                      f"(or 0 for any free port)")


def check(config: ExploreConfig) -> None:
    check_ranges(config, EXPLORE_RANGES)
    if config.pool < config.kept:
        raise ConfigError(f"--kept {config.kept} is more than the --pool {config.pool} composed; give --kept <= --pool")
    if config.export and not config.export.endswith(".html"):
        raise ConfigError(f"--export {config.export}: give a file name ending in .html")
    if config.export and Path(config.export).is_dir():
        raise ConfigError(f"--export {config.export} is a folder; give a file name ending in .html")


def open_explorer(config: ExploreConfig, say=print):
    from latent_ops.editor import Editor
    from latent_ops.explore.composing import Composer
    from latent_ops.explore.map_cache import open_map
    from latent_ops.explore.session import Explorer
    from latent_ops.runs import resolve_run

    run = resolve_run(config.run)
    editor = Editor(run, config.data, config.cache_dir, config.precision)
    latent_map = open_map(editor, config.cache_dir, config.split, config.points, config.seed, config.neighbours,
                          config.min_dist, say)
    composer = Composer(run, config.data, config.cache_dir, config.pool, config.kept)
    return Explorer(editor, latent_map, composer, Path(config.out))


def serve(config: ExploreConfig) -> None:
    began = time.monotonic()
    sock = bind(config.host, config.port)  # first: a taken --host fails before a minute of mapping
    check_writable(Path(config.out))
    explorer = open_explorer(config, say=lambda line: print(line, flush=True))
    import uvicorn

    from latent_ops.explore.server import make_app

    app = make_app(explorer)
    port = sock.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"explore: {explorer.map.rows.size} codes of {explorer.editor.run} on the map "
          f"({'cached' if explorer.map.reused else 'made'} in {explorer.map.seconds:.1f} s); ready in "
          f"{time.monotonic() - began:.1f} s", flush=True)
    print(f"explore: serving http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    threading.Thread(target=explorer.composer.warm, args=(WARM_DELAY,), daemon=True, name="compose-warm").start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.run(sockets=[sock])


def export(config: ExploreConfig) -> Path:
    from latent_ops.explore.export import export_map

    file = Path(config.export)
    check_writable(file.parent if str(file.parent) else Path("."))
    exported = export_map(file, config.run, config.points, config.data, config.cache_dir, config.split, config.seed,
                          config.neighbours, config.min_dist)
    save_config(config, file.with_name(file.stem + "-config.json"))
    print(f"explore: wrote {file} ({file.stat().st_size / 2**20:.1f} MiB, {exported.codes} codes with thumbnails; "
          f"open it in a browser, no server needed)")
    return file


def main(**flags) -> None:
    """Serve the explorer for RUN on http://127.0.0.1:8000/ (or --export FILE.html); every field of
    ExploreConfig is a flag."""
    def body():
        config = dataclass_from_flags(ExploreConfig, {}, flags)
        check(config)
        return export(config) if config.export else serve(config)

    try:
        run_cli(body)
    except KeyboardInterrupt:
        print("explore: stopped", file=sys.stderr)


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
