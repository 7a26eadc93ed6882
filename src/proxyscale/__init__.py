"""proxyscale: small-scale proxies for large-scale Transformer training instabilities (Wortsman et al. 2023).

The package is layered; each subpackage imports only those before it in ``LAYERS`` (its docstring says which),
and a test reads the import graph and fails on a circle or an upward import:

- ``experiments``: the catalogue (one YAML file per experiment, ``scales.yaml``), data only;
- ``core``: the config, the run store and its records, the results table and the paper's measures;
- ``engine``: train one group of proxies (model, optimizers, losses, diagnostics, data, device, the loop);
- ``science``: the drift law, extrapolation with its bands and warnings, the claims and their verdicts;
- ``outputs``: figures and the HTML report;
- ``runs``: sweeps, plans, executors (processes, Ray, Slurm) and progress;
- ``monitor``: watch a user's own training (a plain loop, Hugging Face ``Trainer``, Lightning);
- ``jobs``: ``reproduce``, ``forecast`` and the generated docs; ``cli`` (the ``proxyscale`` command) on top.

The names a user types are here: ``proxyscale.train_group``, ``proxyscale.monitor``, ``proxyscale.forecast``,
``proxyscale.analysis`` (loaded on first use, so ``import proxyscale`` stays light).
"""

from __future__ import annotations

from typing import Any

from .core.config import ConfigError, GroupConfig, Member, load

LAYERS: dict[str, tuple[str, ...]] = {
    "experiments": (),
    "core": ("experiments",),
    "engine": ("experiments", "core"),
    "science": ("experiments", "core", "engine"),
    "outputs": ("experiments", "core", "engine", "science"),
    "runs": ("experiments", "core", "engine", "science", "outputs"),
    "monitor": ("experiments", "core", "engine", "science"),
    "jobs": ("experiments", "core", "engine", "science", "outputs", "runs"),
    "cli": ("experiments", "core", "engine", "science", "outputs", "runs", "monitor", "jobs"),
}
"""Each layer (a subpackage, or the ``cli`` module) and the layers it may import (``tests/test_layout.py``)."""

_PUBLIC = {"train_group": ("proxyscale.engine.train", "train_group"), "monitor": ("proxyscale.monitor", None),
           "forecast": ("proxyscale.jobs.forecast", None), "analysis": ("proxyscale.core.analysis", None)}


def __getattr__(name: str) -> Any:
    """The public names of ``_PUBLIC``, imported on first use (torch loads only when one is asked for)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'proxyscale' has no attribute {name!r}")
    import importlib

    module, attr = _PUBLIC[name]
    value = importlib.import_module(module)
    return getattr(value, attr) if attr else value


__all__ = ["ConfigError", "GroupConfig", "LAYERS", "Member", "load", *_PUBLIC]
__version__ = "0.1.0"
