"""The experiments catalogue: one YAML file per experiment of the paper, and ``scales.yaml``, the one list of scale
names with each scale's base settings and the named LR grids. Reading the names imports nothing heavy (no torch),
so ``proxyscale --help`` and ``list`` stay light.

May import: nothing of proxyscale (the bottom layer: every other layer may read it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

FOLDER = Path(__file__).parent
SCALES_FILE = FOLDER / "scales.yaml"


BEYOND = ("softcap", "qkclip", "muon", "atan2", "zclip", "completep", "norms", "oec", "drift")
"""The mitigations adopted after the paper, one experiment per family, under the paper's lens (docs/beyond.md), in
this order."""


def names() -> list[str]:
    """Experiment names: the paper's in its order (figures, then appendix items E.*, C.*), then ``BEYOND``'s."""
    def key(name: str) -> tuple[int, int]:
        if name in BEYOND:
            return 3, BEYOND.index(name)
        prefix = 0 if name.startswith("fig") else 1 if name.startswith("e") else 2
        return prefix, int("".join(ch for ch in name if ch.isdigit()) or 0)

    return sorted((p.stem for p in FOLDER.glob("*.yaml") if p != SCALES_FILE), key=key)


def paper_names() -> list[str]:
    """The paper's experiments (``reproduce all``)."""
    return [n for n in names() if n not in BEYOND]


SETS = {"all": paper_names, "beyond": lambda: list(BEYOND)}
"""The names ``reproduce`` takes for several experiments: ``all`` (the paper's) and ``beyond`` (``BEYOND``)."""


def read(name: str) -> dict[str, Any]:
    """Experiment ``name``'s file as written (``reproduce.load`` resolves and validates it); KeyError if unknown."""
    path = FOLDER / f"{name}.yaml"
    if not path.exists() or path == SCALES_FILE:
        raise KeyError(name)
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def read_scales() -> dict[str, Any]:
    """scales.yaml: ``lr_grids`` (named LR grids) and ``scales`` (each scale's why, device, spec)."""
    with open(SCALES_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


LR_GRIDS: dict[str, tuple[float, ...]] = {name: tuple(float(x) for x in grid)
                                          for name, grid in read_scales()["lr_grids"].items()}
"""The named LR grids of scales.yaml (``members: {lr: paper}``): ``paper`` is §3's 7 points, 3 per decade."""

SCALES: tuple[str, ...] = tuple(read_scales()["scales"])
"""The scale names, in scales.yaml's order: micro (the two-minute look on a CPU), laptop (the headline claims on
2 CPU cores), mini (one GPU), small (one 80 GB GPU), paper (a cluster)."""


FORECAST_LADDERS: dict[str, str] = {name: body["ladder"] for name, body in read_scales()["scales"].items()
                                    if body.get("ladder")}
"""The scales a forecast can train, each with its ladder (``ladder.LADDERS``): those of scales.yaml with a
``ladder``."""
