"""The one atomic writer: every file and output folder the project writes appears whole or not at all.

A file is written under a temporary name beside its target (``.NAME.tmpPID.SUFFIX``), then
renamed over it (``os.replace``, atomic on POSIX). An output folder is built under a
temporary name and renamed into place, so two commands writing one folder never leave
files of one beside files of the other. A write that fails removes its temporary file;
``remove_temporaries`` sweeps those a killed process left behind.

Example: ``python -c "from autoencoder.atomic import write_json; write_json({'a': 1}, '/tmp/a.json')"``
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

TEMPORARY_MARK = ".tmp"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of the hidden names this module writes under (``.X.tmpPID...``, ``.X.oldPID``)."""
    import re

    return re.match(rf"^\..+({re.escape(TEMPORARY_MARK)}|\.old)\d+", name) is not None


def temporary_name(target: Path) -> Path:
    """A hidden sibling name for writing ``target``; keeps the suffix (numpy adds ``.npz`` otherwise)."""
    return target.with_name(f".{target.stem}{TEMPORARY_MARK}{os.getpid()}{target.suffix}")


def replace_atomically(write: Callable[[Path], Any], file: str | Path) -> Path:
    """Write through ``write(tmp_path)`` then rename over ``file``; on failure the temporary is removed."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(file)
    try:
        write(tmp)
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return file


def write_text(text: str, file: str | Path) -> Path:
    return replace_atomically(lambda tmp: tmp.write_text(text), file)


def write_json(value: Any, file: str | Path, indent: int = 1) -> Path:
    """JSON, refusing NaN and infinities (``allow_nan=False``): they are not JSON and hide bugs."""
    return write_text(json.dumps(value, indent=indent, allow_nan=False) + "\n", file)


def sorted_metadata(data: bytes) -> bytes:
    """A safetensors file's bytes with its ``__metadata__`` in key order. The library writes metadata in the
    order of a Rust HashMap, which changes from one save to the next, so the same weights would get another
    digest (and every stamp made from it) each time they are saved. The header keeps its length."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    if len(header.get("__metadata__") or {}) < 2:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # never: the same keys and values in another order
        raise ValueError(f"the safetensors header grew from {length} to {len(text)} bytes when its metadata was sorted")
    return data[:8] + text.ljust(length, b" ") + data[8 + length:]


def save_tensors(tensors: dict[str, torch.Tensor], file: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """A dict of tensors to a safetensors file, replaced atomically; the same tensors and metadata give the same
    bytes every time."""
    from safetensors.torch import save

    data = sorted_metadata(save(tensors, metadata=metadata))
    return replace_atomically(lambda tmp: Path(tmp).write_bytes(data), file)


def save_weights(networks: torch.nn.Module, file: Path, dtype: torch.dtype | None = None,
                 metadata: dict[str, str] | None = None) -> None:
    """All parameters and buffers to safetensors; ``dtype`` (e.g. fp16) casts floating tensors."""
    tensors = {}
    for name, t in networks.state_dict().items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous().clone()
    save_tensors(tensors, file, metadata)


def replace_folder(build: Callable[[Path], Any], target: str | Path) -> Path:
    """Build a folder through ``build(tmp_folder)``, then put it in place of ``target`` whole.

    An older ``target`` is moved aside and removed only after the new one is in place; a
    failed build leaves ``target`` as it was and removes the temporary folder.
    """
    target = Path(target)
    if target.is_symlink():  # replacing it would replace the link, not what it names: never done silently
        raise ValueError(f"{target} is a link; an output folder is never written through a link")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}{TEMPORARY_MARK}{os.getpid()}")
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders a killed writer left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    left = [p for p in folder.iterdir() if is_temporary(p.name)]
    for path in left:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return left
