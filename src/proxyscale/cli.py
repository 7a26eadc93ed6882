"""The ``proxyscale`` command."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import config as config_mod
from .config import MEMBER_SCALARS, ConfigError

console = Console(stderr=False)
errors = Console(stderr=True)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[tps]:,.0f} tok/s"), TextColumn("max attn logit {task.fields[logit]:.3g}"),
                    TimeRemainingColumn(), console=console, transient=False)


def _fmt(x: float | None) -> str:
    return "nan" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"


def print_summary(summary: dict, title: str) -> None:
    members = summary["members"]
    varying = [n for n in MEMBER_SCALARS if len({m[n] for m in members}) > 1]
    table = Table(title=title)
    table.add_column("member", justify="right")
    for n in varying:
        table.add_column(n, justify="right")
    for col in ("ℓ0", "final eval loss", "diverged"):
        table.add_column(col, justify="right")
    for m in members:
        div = f"yes (step {m['diverged_step']})" if m["diverged"] else "no"
        table.add_row(str(m["member"]), *[f"{m[n]:g}" if not isinstance(m[n], bool) else str(m[n]) for n in varying],
                      _fmt(m["l0"]), _fmt(m["final_eval_loss"]), div)
    console.print(table)
    for row in summary.get("lr_sensitivity", []):
        fixed = ", ".join(f"{n}={row[n]:g}" for n in varying if n != "lr" and n in row)
        lrs = ", ".join(f"{lr:g}" for lr in row["lrs"])
        console.print(f"LR sensitivity{' (' + fixed + ')' if fixed else ''} over LR {{{lrs}}}: "
                      f"[bold]{row['lr_sensitivity']:.4f}[/bold]")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import GroupRun, train_group  # noqa: F401  (torch import deferred until needed)

    cfg = config_mod.load(args.config, args.set)
    out = Path(args.out)
    k = len(cfg.member_list())
    from .model import count_params

    console.print(f"group: {k} member{'s' if k > 1 else ''}, width {cfg.model.width}, depth {cfg.model.depth}, "
                  f"heads {cfg.model.heads}, N = {count_params(cfg.model):,} non-embedding parameters (byte vocab count), "
                  f"{cfg.train.steps} steps, {cfg.train.precision}")
    progress = None if args.quiet else _progress()
    try:
        if progress:
            progress.start()
        summary, trained = train_group(cfg, out, progress=progress)
    except KeyboardInterrupt:
        if progress:
            progress.stop()
        errors.print(f"interrupted; rerun the same command to resume {out} from its last checkpoint")
        return 130
    finally:
        if progress:
            progress.stop()
    if not trained:
        console.print(f"{out} already holds this finished group; nothing to do (delete it to train again)")
    print_summary(summary, f"{out}: final eval loss per member (N = {summary['n_params']:,})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyscale", description="Small-scale proxies for large-scale "
                                     "Transformer training instabilities (Wortsman et al. 2023).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one group of K members (an LR grid, ...) from a YAML file")
    p.add_argument("config", help="group YAML: sections model, data, train, optim, members")
    p.add_argument("--out", required=True, help="run directory (resumed if interrupted, skipped if finished)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set optim.lr=0.01 --set members.lr=[0.001,0.01]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        errors.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
