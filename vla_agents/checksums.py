"""SHA-256 digests of a saved agent's files, recorded in its config file when it is saved and checked
when it is loaded: a damaged weights file, or statistics copied in from another agent, then fail to
load with a message instead of acting wrongly. Folders saved before digests existed record none and
load as before."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digests(folder: str | Path, names: list[str]) -> dict[str, str]:
    """File name -> SHA-256 of `folder/name`, what a config records under "sha256"."""
    return {name: file_sha256(Path(folder) / name) for name in names}


def verify_digests(folder: str | Path, recorded: Any, config_name: str) -> None:
    """Check each digest that `folder/config_name` records (`recorded`, its "sha256" entry, or None)."""
    if recorded is None:
        return
    folder = Path(folder)
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise ValueError(f"{folder / config_name}: 'sha256' must map file names to hex digests, got {recorded!r}")
    for name, expected in recorded.items():
        actual = file_sha256(folder / name)
        if actual != expected:
            raise ValueError(f"{folder / name} does not match the SHA-256 digest that {config_name} records for it "
                             f"({actual[:16]}... instead of {expected[:16]}...): the file is damaged, or was replaced "
                             "by another agent's. Restore it, or save the agent again")


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; one that cannot be parsed fails naming the file."""
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{file} is not a readable safetensors file ({e}); it is empty, truncated or damaged") from e
