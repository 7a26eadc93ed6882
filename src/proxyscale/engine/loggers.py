"""Stream what a group records to TensorBoard and Weights & Biases (``train.log_to``), and a sweep's figures.

Each member is its own run, named and tagged by its scalars (``lr=0.01``, ...), so the LR grid overlays in either UI:
TensorBoard gets one event folder per member under ``DIR/tensorboard/``; W&B one run per member, grouped by the
group's id, with the member's scalars and the group's config as the run config, in offline mode unless
``WANDB_MODE`` says otherwise (no account needed; ``wandb sync DIR/wandb/offline-run-*`` uploads later).
Every column ``metrics.parquet`` gets is logged at the same step. A resumed group restarts from its last checkpoint,
so the steps logged after it by the interrupted process come again: TensorBoard purges the earlier ones
(``purge_step``); a W&B run keeps its id (``resume="allow"``) and continues, and W&B ignores a step below a run's
current one. Both are optional extras:
``pip install 'proxyscale[tensorboard]'`` / ``'proxyscale[wandb]'``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .callbacks import Callback
from ..core.config import MEMBER_SCALARS, GroupConfig, Member, require_extra

Sink = Callable[[int, dict[str, np.ndarray]], None]


def check(kinds: Sequence[str]) -> None:
    """Every logger named (``config.LOG_TO``, validated with the config) is installed, before anything is written;
    each needs the module of its name, from the extra of its name (``proxyscale[tensorboard]``, ``[wandb]``)."""
    for kind in kinds:
        require_extra(f"train.log_to: {kind}", kind, kind)


def member_tag(members: Sequence[Member], i: int) -> str:
    """``m03 lr=0.01 warmup=75``: the member's index and the scalars that vary across the group."""
    varying = [n for n in MEMBER_SCALARS if len({getattr(m, n) for m in members}) > 1]
    return " ".join([f"m{i:02d}", *(f"{n}={getattr(members[i], n):g}" if not isinstance(getattr(members[i], n), bool)
                                    else f"{n}={getattr(members[i], n)}" for n in varying)])


class Sinks(Callback):
    """The loggers as a training callback (``callbacks``): every recorded row goes to each sink."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def on_logged(self, step: int, columns: dict[str, np.ndarray]) -> None:
        for sink in self.sinks:
            sink(step, columns)


@contextlib.contextmanager
def open_loggers(cfg: GroupConfig, out: Path, gid: str, start_step: int = 0) -> Iterator[Sinks]:
    """The loggers of ``cfg.train.log_to`` for the group in ``out``, which (re)starts at ``start_step``, as one
    callback; closed (flushed) on exit."""
    members = cfg.member_list()
    sinks: list[Sink] = []
    closers: list[Callable[[], None]] = []
    try:
        if "tensorboard" in cfg.train.log_to:
            sink, close = _tensorboard(out, members, start_step)
            sinks.append(sink)
            closers.append(close)
        if "wandb" in cfg.train.log_to:
            sink, close = _wandb(cfg, out, gid, members)
            sinks.append(sink)
            closers.append(close)
        yield Sinks(sinks)
    finally:
        for close in closers:
            close()


def _tensorboard(out: Path, members: list[Member], start_step: int) -> tuple[Sink, Callable[[], None]]:
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: TensorBoard hides what an interrupted run logged from start_step on; the resumed run logs it again
    writers = [SummaryWriter(log_dir=str(out / "tensorboard" / member_tag(members, i).replace(" ", "_")),
                             purge_step=start_step or None) for i in range(len(members))]
    if not start_step:
        for writer, m in zip(writers, members):
            writer.add_text("member", ", ".join(f"{n}={getattr(m, n)}" for n in MEMBER_SCALARS), 0)

    def sink(step: int, cols: dict[str, np.ndarray]) -> None:
        for i, writer in enumerate(writers):
            for name, values in cols.items():
                writer.add_scalar(name, float(values[i]), step)

    def close() -> None:
        for writer in writers:
            writer.close()

    return sink, close


def _wandb(cfg: GroupConfig, out: Path, gid: str, members: list[Member]) -> tuple[Sink, Callable[[], None]]:
    import wandb

    from ..core.table import flatten, identity

    flat = {k: v for k, v in flatten(identity(cfg)).items() if not k.startswith("members.")}
    # one id per member, so a resumed group continues its runs (steps W&B already has are not logged twice)
    runs = [wandb.init(mode=os.environ.get("WANDB_MODE", "offline"), dir=str(out), project="proxyscale", group=gid,
                       name=f"{gid} {member_tag(members, i)}", reinit="create_new", id=f"{gid}-m{i:02d}",
                       resume="allow",
                       config={**{f"member.{n}": getattr(m, n) for n in MEMBER_SCALARS}, **flat},
                       tags=member_tag(members, i).split(" ")[1:] or None, settings=wandb.Settings(silent=True))
            for i, m in enumerate(members)]

    def sink(step: int, cols: dict[str, np.ndarray]) -> None:
        for i, run in enumerate(runs):
            run.log({name: (float(v[i]) if math.isfinite(v[i]) else None) for name, v in cols.items()}, step=step)

    def close() -> None:
        for run in runs:
            run.finish()

    return sink, close


def log_figures(kinds: Sequence[str], out: Path, name: str, paths: Sequence[Path]) -> None:
    """Log a sweep's (or an experiment's) PNG figures: as images in ``out/tensorboard/figures`` and as one W&B run
    ``<name> figures``."""
    pngs = [p for p in paths if str(p).endswith(".png")]
    if not pngs or not kinds:
        return
    if "tensorboard" in kinds:
        import matplotlib.image
        from torch.utils.tensorboard import SummaryWriter

        with contextlib.closing(SummaryWriter(log_dir=str(out / "tensorboard" / "figures"))) as writer:
            for p in pngs:
                writer.add_image(Path(p).stem, matplotlib.image.imread(p)[..., :3], 0, dataformats="HWC")
    if "wandb" in kinds:
        import wandb

        run = wandb.init(mode=os.environ.get("WANDB_MODE", "offline"), dir=str(out), project="proxyscale",
                         group=name, name=f"{name} figures", reinit="create_new", settings=wandb.Settings(silent=True))
        run.log({Path(p).stem: wandb.Image(str(p)) for p in pngs})
        run.finish()


def sweep_kinds(groups: Sequence[Any]) -> list[str]:
    """The loggers any group of a sweep writes to (its figures go to the same ones)."""
    return sorted({kind for g in groups for kind in g.cfg.train.log_to})
