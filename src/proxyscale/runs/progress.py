"""Progress a user can follow, on a terminal or not.

On a terminal the CLI draws rich progress bars. Where stdout is not a terminal (nohup, CI, a Slurm log) a bar
prints nothing for the whole run, so ``Lines`` prints plain lines instead: one per group started and finished
(size, switches, members, steps, its time, the ETA of the whole command) and, while anything trains, a heartbeat at
least every ``every_seconds`` (60): step, loss, tokens/s and the ETA of the whole command. Both take the same calls
from ``sweep`` and ``train``:

- ``add_task(description, total=, completed=, **fields)`` and ``update(task, completed=, **fields)`` (rich's API);
- ``group_started(group)`` / ``group_finished(group, seconds)`` where the sweep knows them (``Lines`` only; a rich
  bar ignores them).

A group a sweep trains in another process (a local worker, a Ray task, a Slurm job) tells the sweep how far it is
through its folder: ``Heartbeat`` (a training callback) writes ``heartbeat.json`` there every few seconds, and
``Lines`` reads it for the running groups' heartbeat lines. ``Lines`` takes its ``clock`` as an argument, so the
tests drive a minute with a fake clock.

Nothing here imports torch.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..engine.callbacks import Callback, best_loss

HEARTBEAT = "heartbeat.json"
"""A training group's progress in its folder (``Heartbeat`` writes it, ``Lines`` reads it): step, steps, loss,
tokens/s and the seconds it has trained."""


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


def _loss_text(loss: float | None, members: int | None = None) -> str:
    if loss is None:
        return "loss nan (every member diverged)"
    return f"loss {loss:.4g}" + (f" (best of {members} members)" if members and members > 1 else "")


class Heartbeat(Callback):
    """Writes ``folder/heartbeat.json`` (``HEARTBEAT``) when training starts and then at most every
    ``every_seconds`` on a logged step: how far a group trained in another process is (the sweep's ``Lines`` reads
    it). Atomic writes, from the group's one writer."""

    def __init__(self, folder: Path, every_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder, self.every, self.clock = Path(folder), every_seconds, clock
        self.last = -math.inf
        self.state: dict[str, Any] = {}
        self.t0 = 0.0

    def _write(self) -> None:
        from ..core import store

        self.last = self.clock()
        store.write_json(self.folder / HEARTBEAT, {**self.state, "seconds": round(self.last - self.t0, 1)})

    def on_start(self, run: Any) -> None:
        self.t0 = self.clock()
        self.state = {"step": run.next_step, "first_step": run.next_step, "steps": run.cfg.train.steps,
                      "members": len(run.members), "loss": None, "tokens_per_s": None}
        self._write()

    def on_logged(self, step: int, columns: dict[str, np.ndarray]) -> None:
        if "tokens_per_s" not in columns:  # an evaluation row
            return
        self.state.update(step=step + 1, loss=best_loss(columns), tokens_per_s=float(columns["tokens_per_s"][0]))
        if self.clock() - self.last >= self.every:
            self._write()


def read_heartbeat(folder: Path) -> dict[str, Any] | None:
    """A group's ``heartbeat.json``, or None where there is none yet (or it cannot be read right now)."""
    from ..core import store

    try:
        beat = store.read_json(Path(folder) / HEARTBEAT)
    except (OSError, ValueError):
        return None
    return beat if isinstance(beat, dict) and "step" in beat and "steps" in beat else None


class Lines:
    """Plain progress lines for a log (see the module doc). ``weights``: each group id's share of the work (e.g. its
    FLOPs), from which the ETA of the whole command is the elapsed time over the work done, times the work left.
    ``clock``: what ``time.monotonic`` is to this object (the tests pass a fake one)."""

    def __init__(self, out: TextIO | None = None, every_seconds: float = 60.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.out = out or sys.stdout
        self.every = every_seconds
        self.clock = clock or (lambda: time.monotonic())
        self.tasks: dict[int, dict[str, Any]] = {}
        self.weights: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.running: dict[str, Any] = {}  # group id -> the group, while it trains
        self.finished: set[str] = set()
        self.pool: Path | None = None
        self.done_work = 0.0
        self.done_seconds = 0.0
        self.parallel = 1
        self.t0 = self.clock()
        self.last_line = self.t0
        self.n_done = 0
        self.n_total = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def print(self, text: str) -> None:
        with self._lock:
            self.last_line = self.clock()
            self.out.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
            self.out.flush()

    # -- the rich-like API -------------------------------------------------------------------------------------
    def add_task(self, description: str, total: int | None = None, completed: int = 0, **fields: Any) -> int:
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "completed": completed, "last": -1e18,
                            "t0": self.clock(), "c0": completed, **fields}
        if description == "groups":
            self.n_total, self.n_done = total or 0, completed
            self.t0 = self.clock()
        return task

    def update(self, task: int, completed: int | None = None, **fields: Any) -> None:
        t = self.tasks[task]
        if completed is not None:
            t["completed"] = completed
        t.update(fields)
        if t["description"] != "train":
            return
        finished = t["total"] is not None and t["completed"] >= t["total"]
        if self.clock() - t["last"] < self.every and not finished:
            return
        self._train_line(t)

    def _train_line(self, t: dict[str, Any]) -> None:
        """A group trained in this process: step, loss, tokens/s, max attention logit, ETA."""
        now = t["last"] = self.clock()
        done, total = t["completed"], t["total"] or 0
        rate = (done - t["c0"]) / max(now - t["t0"], 1e-9)
        eta = (total - done) / rate if rate > 0 else None
        self.print(f"step {done:,}/{total:,} ({100 * done / max(total, 1):.0f}%), "
                   f"{_loss_text(t.get('loss'), t.get('members'))}, {t.get('tps', 0):,.0f} tok/s, "
                   f"max attn logit {t.get('logit', 0):.3g}" + (f", ETA {fmt_duration(eta)}" if eta else ""))

    # -- the heartbeat -----------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Print a heartbeat when nothing was printed for ``every_seconds``: the in-process group's step line, or a
        line per running group of a sweep (from its ``heartbeat.json``) with the ETA of the whole command."""
        if self.clock() - self.last_line < self.every:
            return
        trains = [t for t in self.tasks.values() if t["description"] == "train"
                  and not (t["total"] is not None and t["completed"] >= t["total"])]
        if trains:
            self._train_line(trains[-1])
            return
        if not self.running:
            return
        beats = {gid: read_heartbeat(self.pool / gid) if self.pool else None for gid in self.running}
        eta = self._eta(self.clock(), beats)
        parts = []
        for gid, group in self.running.items():
            b = beats[gid]
            if b is None:
                parts.append(f"group {gid[:6]} ({describe(group)}): starting")
                continue
            tps = b.get("tokens_per_s")
            parts.append(f"group {gid[:6]} ({describe(group)}): step {b['step']:,}/{b['steps']:,}, "
                         f"{_loss_text(b.get('loss'), b.get('members'))}"
                         + (f", {tps:,.0f} tok/s" if tps else ""))
        self.print("; ".join(parts) + f" ({self.n_done}/{self.n_total} groups done"
                   + (f", ETA {fmt_duration(eta)})" if eta is not None else ")"))

    def _tick_forever(self) -> None:
        while not self._stop.wait(min(5.0, self.every / 4)):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a heartbeat must never take the run down with it
                pass

    # -- group events ------------------------------------------------------------------------------------------
    def set_weights(self, weights: dict[str, float], parallel: int = 1, pool: Path | None = None) -> None:
        """Each group's share of the work (e.g. its FLOPs), how many groups run at once, for the ETA, and the pool
        whose group folders hold the running groups' heartbeats."""
        self.weights, self.parallel = dict(weights), max(1, parallel)
        self.pool = Path(pool) if pool is not None else None

    def group_started(self, group: Any) -> None:
        self.started[group.id] = self.clock()
        self.running[group.id] = group
        self.print(f"group {group.id[:6]} started: {describe(group)}")

    def group_finished(self, group: Any, seconds: float | None = None) -> None:
        now = self.clock()
        seconds = seconds if seconds is not None else now - self.started.get(group.id, now)
        self.n_done += 1
        self.finished.add(group.id)
        self.running.pop(group.id, None)
        self.done_work += self.weights.get(group.id, 1.0)
        self.done_seconds += seconds
        eta = self._eta(now) if self.n_done < self.n_total else None
        tail = f", ETA {fmt_duration(eta)}" if eta is not None else ""
        self.print(f"group {group.id[:6]} finished in {fmt_duration(seconds)}: {describe(group)} "
                   f"({self.n_done}/{self.n_total} groups done{tail})")

    def _eta(self, now: float, beats: dict[str, dict[str, Any] | None] | None = None) -> float | None:
        """Seconds until the whole command is done. Seconds per unit of work come from the finished groups, else
        from the running groups' heartbeats (their seconds over the fraction they have trained); a running group
        has what it is expected to take less what it has run (its heartbeat's own projection where there is one);
        the groups not started run ``parallel`` at a time. None before anything can be measured."""
        beats = beats or {}
        projected = {}  # group id -> (expected seconds, seconds run) from its heartbeat
        for gid, b in beats.items():
            if b and b.get("seconds") and b["step"] > b.get("first_step", 0):
                frac = (b["step"] - b.get("first_step", 0)) / max(b["steps"] - b.get("first_step", 0), 1)
                projected[gid] = (b["seconds"] / frac, b["seconds"])
        if self.done_work > 0:
            per = self.done_seconds / self.done_work
        elif projected:
            per = sum(total for total, _ in projected.values()) / sum(self.weights.get(g, 1.0) for g in projected)
        else:
            return None
        running = [projected[g][0] - projected[g][1] if g in projected
                   else self.weights.get(g, 1.0) * per - (now - t)
                   for g, t in self.started.items() if g not in self.finished]
        running = [max(0.0, r) for r in running]
        queued = sum(w * per for g, w in self.weights.items() if g not in self.started)
        return max([*running, (sum(running) + queued) / self.parallel])

    # rich's Progress is a context manager; so is this. Started, a daemon thread calls ``tick`` every few seconds.
    def start(self) -> None:
        if self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick_forever, name="proxyscale-heartbeat", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join(timeout=5)
            self._ticker = None

    def __enter__(self) -> Lines:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
