"""Driving the explorer from outside, for its browser tests, its bench and its screenshot: where Debian's Chromium
is, and a server started as a user starts it.

Browsers are never downloaded (``playwright install`` is not used): ``apt-get install -y chromium`` puts the real
binary in the package's lib folder (``/usr/lib/chromium/chromium``; ``/usr/bin/chromium`` is a wrapper script), and
Playwright launches it through ``executable_path``.

Example: ``python -c "from latent_ops.explore.driving import chromium_binary; print(chromium_binary())"``
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_BINARY = "/usr/lib/chromium/chromium"
INSTALL = "apt-get update && apt-get install -y chromium"


def chromium_binary() -> str | None:
    """The binary ``dpkg -L chromium`` lists in the package's lib folder, or None when it is not installed."""
    try:
        listed = subprocess.run(["dpkg", "-L", "chromium"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    for line in listed.splitlines():
        if line.endswith("/lib/chromium/chromium") and os.access(line, os.X_OK):
            return line
    return PACKAGE_BINARY if os.access(PACKAGE_BINARY, os.X_OK) else None


def start_server(flags: list[str], cwd: str | Path, wait: float = 300) -> tuple[subprocess.Popen, str, float]:
    """``python -m latent_ops.explore FLAGS`` in a subprocess; returns it, the URL it serves and the seconds from
    its start to that line. A server that stops or does not serve within ``wait`` seconds raises RuntimeError
    with its output."""
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "latent_ops.explore", *flags], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    while time.monotonic() - began < wait:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if "serving http://" in line:
            return process, line.split("serving ", 1)[1].split()[0], time.monotonic() - began
    process.kill()
    raise RuntimeError("the explorer did not start:\n" + "".join(lines))
