"""Every command answers --help with its usage and flags (exit 0), run as a user runs it: a real process."""
from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def command_modules() -> list[str]:
    """Every module of the two packages that runs as a command (it ends in cli.fire_command, python-fire)."""
    files = [*ROOT.glob("autoencoder/*.py"), *ROOT.glob("latent_ops/*.py"), *ROOT.glob("latent_ops/*/__main__.py")]
    modules = []
    for file in sorted(files):
        if "\n    fire_command(main)" in file.read_text():
            modules.append(".".join(file.relative_to(ROOT).with_suffix("").parts).removesuffix(".__main__"))
    return modules


def help_of(module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_every_command_prints_its_usage_with_help():
    modules = command_modules()
    assert {"latent_ops.compose", "latent_ops.showcase", "autoencoder.train", "latent_ops.explore"} <= set(modules)
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = dict(zip(modules, pool.map(help_of, modules)))
    for module, done in answers.items():
        assert done.returncode == 0 and "Traceback" not in done.stderr, (module, done.stderr)
        assert done.stdout.startswith(f"usage: python -m {module} "), (module, done.stdout[:200])
        flags = re.findall(r"^  --(\w+) ", done.stdout, flags=re.M)
        assert flags, f"{module} --help lists no flag"
