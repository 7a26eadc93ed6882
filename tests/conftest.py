"""Tests run on one thread, fp32, byte-level vocab, tens of steps; caches go to a temporary folder."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # shared test models (tiny_models.py): test modules load by path

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PROXYSCALE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny(**over) -> dict:
    """A raw group config for a tiny, fast fp32 run on the synthetic corpus; ``over`` maps sections to fields."""
    raw = {
        "model": {"width": 32, "depth": 2, "heads": 2, "qk_layernorm": True, "vocab": "byte"},
        "data": {"corpus": "synthetic", "seq_len": 32, "batch_size": 4, "eval_batches": 2},
        "train": {"steps": 20, "eval_every": 10, "seed": 0, "threads": 1, "precision": "fp32"},
        "optim": {"warmup": 5},
        "members": {},
    }
    for section, fields in over.items():
        if section == "members":
            raw["members"] = dict(fields)
        else:
            raw[section] = {**raw[section], **fields}
    return raw


@pytest.fixture
def make_raw():
    """The ``tiny`` config builder, as a fixture (test modules are imported by path, not as a package)."""
    return tiny
