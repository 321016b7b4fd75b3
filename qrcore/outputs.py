"""Folders that commands write their files into (`qrn export --out`, `qrn report --out`, `qrn run --shards`)."""

from __future__ import annotations

import os
from pathlib import Path

from qrcore.errors import QRNError


def check_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """`path` as a folder that can be made or is there; a one-line QRNError naming `flag` if it or a parent is a file."""
    folder = Path(path)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker == folder:
        raise QRNError(f"{folder} is a file, not a folder; pass a folder to {flag} (it is created if missing)")
    if blocker is not None:
        raise QRNError(f"{blocker} is a file, so the folder {folder} cannot be made; pass another {flag}")
    return folder


def make_folder(path: str | os.PathLike) -> Path:
    """`path` as a folder, created if missing; a one-line QRNError (nothing created) if it or a parent is a file."""
    folder = check_folder(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise QRNError(f"cannot make the folder {folder} ({err.strerror}); pass another --out") from None
    return folder
