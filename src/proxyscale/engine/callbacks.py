"""One protocol for everything that watches a group train: the progress bar or lines, the loggers (TensorBoard,
W&B), the monitor's alarms, a test's interrupt. The training loop (``train.GroupRun.run``) calls each callback at
four points and knows nothing of what they do, so adding an observer touches no loop code:

- ``on_start(run)``: once, after ℓ0 is known, before the first step (``run.next_step`` > 0 on a resume);
- ``on_logged(step, columns)``: every row the metrics log records — a logged training step's columns, its
  throughput (``tokens_per_s``), an evaluation (``eval_loss``) — as host arrays ``{name: [K]}``;
- ``on_step_end(step)``: after every optimizer step (raise ``KeyboardInterrupt`` here to stop, as the tests do);
- ``on_finish(summary)``: once, with the group's summary (``records.GroupSummary``: ``summary.json``), after the
  final evaluation.

A callback subclasses ``Callback`` and overrides what it needs. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def best_loss(columns: dict[str, np.ndarray]) -> float | None:
    """The lowest finite training loss over a logged row's members (None when every member has diverged)."""
    loss = np.asarray(columns.get("loss", []), dtype=float)
    finite = loss[np.isfinite(loss)]
    return float(finite.min()) if finite.size else None


class Callback:
    """Does nothing at each point; override what you need (module docstring)."""

    def on_start(self, run: Any) -> None:
        pass

    def on_logged(self, step: int, columns: dict[str, np.ndarray]) -> None:
        pass

    def on_step_end(self, step: int) -> None:
        pass

    def on_finish(self, summary: Any) -> None:
        pass


class Callbacks(Callback):
    """Several callbacks as one, called in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.items = [c for c in callbacks if c is not None]

    def on_start(self, run: Any) -> None:
        for c in self.items:
            c.on_start(run)

    def on_logged(self, step: int, columns: dict[str, np.ndarray]) -> None:
        for c in self.items:
            c.on_logged(step, columns)

    def on_step_end(self, step: int) -> None:
        for c in self.items:
            c.on_step_end(step)

    def on_finish(self, summary: Any) -> None:
        for c in self.items:
            c.on_finish(summary)


class StepEnd(Callback):
    """``fn(step)`` after every step: the smallest callback (a test's interrupt, a custom stop)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def on_step_end(self, step: int) -> None:
        self.fn(step)


class Progress(Callback):
    """A group's progress on a rich ``Progress`` or a ``progress.Lines``: the step, tokens/s, the largest max
    attention logit of any member and layer, and the best member's loss (the task's ``tps``, ``logit``, ``loss`` and
    ``members`` fields, which the CLI's columns and ``Lines`` print; this class is the one place that names them)."""

    FIELDS = ("tps", "logit", "loss", "members")

    def __init__(self, progress: Any) -> None:
        self.progress, self.task, self.total = progress, None, 0
        self.logit = 0.0

    def on_start(self, run: Any) -> None:
        self.total = run.cfg.train.steps
        self.task = self.progress.add_task("train", total=self.total, completed=run.next_step, tps=0.0, logit=0.0,
                                           loss=None, members=len(run.members))

    def on_logged(self, step: int, columns: dict[str, np.ndarray]) -> None:
        logits = [float(np.nanmax(v)) for k, v in columns.items() if k.startswith("attn_logit_max/")
                  and np.isfinite(v).any()]
        if logits:
            self.logit = max(logits)
        if "tokens_per_s" in columns and self.task is not None:
            self.progress.update(self.task, completed=step + 1, tps=float(columns["tokens_per_s"][0]),
                                 logit=self.logit, loss=best_loss(columns))

    def on_finish(self, summary: Any) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.total)
