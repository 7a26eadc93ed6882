"""Progress a user can follow, on a terminal or not.

On a terminal the CLI draws rich progress bars. Where stdout is not a terminal (nohup, CI, a Slurm log) a bar
prints nothing for the whole run, so ``Lines`` prints plain lines instead: one per group started and finished
(size, switches, members, steps, its time, the ETA of the whole command) and, inside a single group, one line every
``every_seconds``. Both take the same calls from ``sweep`` and ``train``:

- ``add_task(description, total=, completed=, **fields)`` and ``update(task, completed=, **fields)`` (rich's API);
- ``group_started(group)`` / ``group_finished(group, seconds)`` where the sweep knows them (``Lines`` only; a rich
  bar ignores them).

Nothing here imports torch.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def fmt_duration(seconds: float, minute_digits: int = 1) -> str:
    """12 s, 3.4 min (``minute_digits`` decimals), 1.2 h: the one way durations are written."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.{minute_digits}f} min"
    return f"{seconds / 3600:.1f} h"


def short_label(key: str) -> str:
    """model.qk_layernorm -> qk_layernorm; a paired axis train.steps,optim.warmup -> steps,warmup."""
    return ",".join(part.split(".")[-1] for part in key.split(","))


def describe(group: Any) -> str:
    """A group in one phrase: size, switches, members, steps (``sweep.Group``: labels and cfg)."""
    labels = dict(group.labels)
    size = labels.pop("size", f"d{group.cfg.model.width}-L{group.cfg.model.depth}")
    switches = ", ".join(f"{short_label(k)}={v}" for k, v in labels.items())
    k = len(group.cfg.member_list())
    return (f"{size}{' ' + switches if switches else ''}, {k} member{'s' if k > 1 else ''}, "
            f"{group.cfg.train.steps:,} steps")


class Lines:
    """Plain progress lines for a log (see the module doc). ``weights``: each group id's share of the work (e.g. its
    FLOPs), from which the ETA of the whole command is the elapsed time over the work done, times the work left."""

    def __init__(self, out: TextIO | None = None, every_seconds: float = 60.0) -> None:
        self.out = out or sys.stdout
        self.every = every_seconds
        self.tasks: dict[int, dict[str, Any]] = {}
        self.weights: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.finished: set[str] = set()
        self.done_work = 0.0
        self.done_seconds = 0.0
        self.parallel = 1
        self.t0 = time.monotonic()
        self.n_done = 0
        self.n_total = 0

    def print(self, text: str) -> None:
        self.out.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
        self.out.flush()

    # -- the rich-like API -------------------------------------------------------------------------------------
    def add_task(self, description: str, total: int | None = None, completed: int = 0, **fields: Any) -> int:
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "completed": completed, "last": -1e18,
                            "t0": time.monotonic(), "c0": completed, **fields}
        if description == "groups":
            self.n_total, self.n_done = total or 0, completed
            self.t0 = time.monotonic()
        return task

    def update(self, task: int, completed: int | None = None, **fields: Any) -> None:
        t = self.tasks[task]
        if completed is not None:
            t["completed"] = completed
        t.update(fields)
        if t["description"] != "train":
            return
        now = time.monotonic()
        finished = t["total"] is not None and t["completed"] >= t["total"]
        if now - t["last"] < self.every and not finished:
            return
        t["last"] = now
        done, total = t["completed"], t["total"] or 0
        rate = (done - t["c0"]) / max(now - t["t0"], 1e-9)
        eta = (total - done) / rate if rate > 0 else None
        self.print(f"step {done:,}/{total:,} ({100 * done / max(total, 1):.0f}%), {t.get('tps', 0):,.0f} tok/s, "
                   f"max attn logit {t.get('logit', 0):.3g}" + (f", ETA {fmt_duration(eta)}" if eta else ""))

    # -- group events ------------------------------------------------------------------------------------------
    def set_weights(self, weights: dict[str, float], parallel: int = 1) -> None:
        """Each group's share of the work (e.g. its FLOPs) and how many groups run at once, for the ETA."""
        self.weights, self.parallel = dict(weights), max(1, parallel)

    def group_started(self, group: Any) -> None:
        self.started[group.id] = time.monotonic()
        self.print(f"group {group.id[:6]} started: {describe(group)}")

    def group_finished(self, group: Any, seconds: float | None = None) -> None:
        now = time.monotonic()
        seconds = seconds if seconds is not None else now - self.started.get(group.id, now)
        self.n_done += 1
        self.finished.add(group.id)
        self.done_work += self.weights.get(group.id, 1.0)
        self.done_seconds += seconds
        tail = ""
        if self.n_done < self.n_total and self.done_work > 0:
            # seconds per unit of work, from the finished groups; a running group has what it was expected to take
            # less what it has run; the groups not started run `parallel` at a time
            per = self.done_seconds / self.done_work
            running = [max(0.0, self.weights.get(g, 1.0) * per - (now - t)) for g, t in self.started.items()
                       if g not in self.finished]
            queued = sum(w * per for g, w in self.weights.items() if g not in self.started)
            eta = max([*running, (sum(running) + queued) / self.parallel])
            tail = f", ETA {fmt_duration(eta)}"
        self.print(f"group {group.id[:6]} finished in {fmt_duration(seconds)}: {describe(group)} "
                   f"({self.n_done}/{self.n_total} groups done{tail})")

    # rich's Progress is a context manager; so is this
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None
