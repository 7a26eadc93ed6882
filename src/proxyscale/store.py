"""On-disk layout of a group: atomic writes, the DONE marker, checkpoints for resume.

``DIR/config.json``, ``DIR/metrics.parquet``, ``DIR/summary.json`` and ``DIR/DONE`` appear only once the group
has finished; while it trains, ``DIR/checkpoint/`` holds the last resumable state. Every file is written to a
temporary name and renamed into place, so an interruption never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

DONE = "DONE"
CHECKPOINT = "checkpoint"
PROGRESS = "progress.json"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_parquet(path: Path, frame: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    frame.write_parquet(tmp)
    os.replace(tmp, path)


def is_done(out: Path) -> bool:
    return (out / DONE).exists()


def save_checkpoint(out: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts only) as DIR/checkpoint/state.pt, atomically."""
    ckpt = out / CHECKPOINT
    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / f".state.pt.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, ckpt / "state.pt")
    if "next_step" in state:  # a small sidecar, so a plan can say how far a group got without loading its tensors
        write_json(ckpt / PROGRESS, {"next_step": int(state["next_step"])})


def checkpoint_step(out: Path) -> int | None:
    """The step an unfinished group resumes from, or None when it has no checkpoint (0 when it has one of
    unknown progress)."""
    ckpt = out / CHECKPOINT
    if not (ckpt / "state.pt").exists():
        return None
    try:
        return int(read_json(ckpt / PROGRESS)["next_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def load_checkpoint(out: Path, device: torch.device) -> dict[str, Any] | None:
    path = out / CHECKPOINT / "state.pt"
    if not path.exists():
        return None
    return torch.load(path, map_location=device, weights_only=True)  # weights_only: never unpickle code


def clear_checkpoint(out: Path) -> None:
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
