"""A plan before a run: the groups, their members, tokens and FLOPs, what the pool already holds, and an estimate
of the wall time on this device from a short measured probe.

The probe builds each distinct group shape once (same members, model, batch, precision and device; random tokens
of the same vocabulary, so no data or tokenizer is needed), times a few optimizer steps eagerly, and scales to the
steps the group has left, plus its evaluations. It is eager even where the run will compile, so on a GPU it
overestimates (compiled steps are faster; compilation itself costs tens of seconds per shape).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import store
from ..core.config import ConfigError, GroupConfig
from ..engine.device import train_flops_per_token
from .progress import fmt_duration

PROBE_STEPS = 3
"""Timed optimizer steps per shape (after one untimed warm-up step); fewer when a step is slow."""
PROBE_BUDGET_S = 20.0
"""Stop timing a shape once its timed steps took this long: one step of a large group is enough."""
LONG_TOKENS = 1e8
"""Runs that train more tokens than this print their plan, probe included, before they start."""


@dataclass
class GroupPlan:
    id: str
    labels: dict[str, Any]
    cfg: GroupConfig
    members: int
    steps: int
    tokens: int  # all members, the whole run
    flops: float  # training FLOPs, all members, the whole run
    steps_left: int  # 0 when the pool holds the finished group
    status: str  # "done", "resumes at step s", "new"
    seconds: float | None = None  # the estimate for what is left; None when not probed or it does not fit
    note: str = ""  # why there is no estimate (e.g. the group does not fit on this device)


@dataclass
class Plan:
    groups: list[GroupPlan]
    device: str = ""
    probe_seconds: float = 0.0
    probed: bool = False

    @property
    def tokens_left(self) -> int:
        return sum(g.tokens * g.steps_left // g.steps for g in self.groups)

    @property
    def seconds(self) -> float | None:
        """Estimated wall time of what is left, groups one after another (None when any group has no estimate)."""
        left = [g for g in self.groups if g.steps_left]
        if not self.probed or any(g.seconds is None for g in left):
            return None
        return sum(g.seconds or 0.0 for g in left)


def vocab_size(cfg: GroupConfig) -> int:
    """The vocabulary a group will train with: the BPE size it names, or the 256 bytes."""
    from ..engine.data import vocab_size as of_vocab

    return of_vocab(cfg.model.vocab)


def group_plan(gid: str, cfg: GroupConfig, labels: dict[str, Any], pool: Path) -> GroupPlan:
    """A group's size and cost, and what ``pool/<gid>`` already holds of it."""
    k, t, d = len(cfg.member_list()), cfg.train, cfg.data
    tokens = k * t.steps * d.batch_size * d.seq_len
    flops = tokens * train_flops_per_token(cfg.model.width, cfg.model.depth, d.seq_len, vocab_size(cfg))
    folder = pool / gid
    if store.is_done(folder):
        status, left = "done", 0
    else:
        at = store.checkpoint_step(folder)
        status, left = ("new", t.steps) if at is None else (f"resumes at step {at}", t.steps - at)
    return GroupPlan(gid, labels, cfg, k, t.steps, tokens, float(flops), left, status)


def make(groups: list[Any], pool: Path, probe: bool = False) -> Plan:
    """The plan of ``groups`` (``sweep.Group``s) against ``pool``; with ``probe``, estimate each group's time."""
    plan = Plan([group_plan(g.id, g.cfg, g.labels, pool) for g in groups])
    if probe:
        estimate(plan)
    return plan


def _shape(cfg: GroupConfig) -> str:
    """What decides the cost of a step: everything but the schedule, the members' values and the logging."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("steps", "eval_every", "checkpoint_every", "seed")}
    d["members"] = len(cfg.member_list())
    d["optim"] = {}
    return repr(sorted((k, repr(v)) for k, v in d.items()))


def estimate(plan: Plan) -> None:
    """Probe every distinct shape among the groups with steps left; fill in each group's estimated seconds."""
    from ..engine.device import describe, resolve_device

    start = time.perf_counter()
    cache: dict[str, float | str] = {}
    for g in plan.groups:
        if not g.steps_left:
            continue
        key = _shape(g.cfg)
        if key not in cache:
            cache[key] = probe_step_seconds(g.cfg)
        step = cache[key]
        if isinstance(step, str):
            g.note = step
            continue
        evals = g.steps_left // g.cfg.train.eval_every + 2  # periodic evaluations, ℓ0 and the final one
        eval_seconds = evals * g.cfg.data.eval_batches * step / 3  # a forward pass is about a third of a step
        g.seconds = step * g.steps_left + eval_seconds
    plan.probed = True
    plan.probe_seconds = time.perf_counter() - start
    if plan.groups:
        plan.device = describe(resolve_device(plan.groups[0].cfg.train.device))


def probe_step_seconds(cfg: GroupConfig) -> float | str:
    """Seconds per optimizer step of ``cfg``'s group on its device (eager, random tokens), or why it cannot run."""
    import numpy as np
    import torch

    from ..engine.data import TokenData
    from ..engine.train import GroupRun

    v, d = vocab_size(cfg), cfg.data
    probe_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile="off", steps=PROBE_STEPS + 1))
    n = max(4 * d.batch_size * (d.seq_len + 1), 100_000)
    gen = np.random.default_rng(0)
    data = TokenData(gen.integers(0, v, n).astype(np.int32), gen.integers(0, v, n // 4).astype(np.int32), v, "probe")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run = GroupRun(probe_cfg, Path(tmp), data)
        except ConfigError as err:  # the group does not fit on this device: the plan says so
            return str(err)
        run.start(l0=math.log(v))  # the uniform model's loss: the probe times steps, it needs no evaluation
        sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
        timed, spent = 0, 0.0
        for s in range(PROBE_STEPS + 1):
            sync()
            t0 = time.perf_counter()
            cols = run.step(s)
            if cols is not None:
                _ = {k: x.cpu() for k, x in cols.items()}  # a logged step's device-to-host copy, as in training
            sync()
            if s > 0:  # step 0 warms up (allocations, first-call overheads)
                timed, spent = timed + 1, spent + time.perf_counter() - t0
                if spent > PROBE_BUDGET_S:
                    break
        del run
    return spent / max(timed, 1)


def fmt_seconds(s: float | None) -> str:
    """An estimate in whole minutes (``progress.fmt_duration``); "–" when there is none."""
    return "–" if s is None else fmt_duration(s, minute_digits=0)


def fmt_count(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def summary(plan: Plan) -> dict[str, Any]:
    """The plan's totals as numbers (for JSON and tests)."""
    gs = plan.groups
    return {"groups": len(gs), "done": sum(g.status == "done" for g in gs),
            "resuming": sum(g.status.startswith("resumes") for g in gs), "new": sum(g.status == "new" for g in gs),
            "runs": sum(g.members for g in gs), "tokens": sum(g.tokens for g in gs),
            "tokens_left": plan.tokens_left, "flops": sum(g.flops for g in gs), "seconds": plan.seconds,
            "device": plan.device, "probe_seconds": round(plan.probe_seconds, 1)}
