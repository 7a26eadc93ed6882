"""The ``proxyscale`` command."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
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
    from .train import train_group  # deferred: torch loads only for commands that train

    cfg = config_mod.load(args.config, args.set)
    out = Path(args.out)
    k = len(cfg.member_list())
    from .device import resolve_compile, resolve_device, resolve_precision
    from .model import count_params

    device = resolve_device(cfg.train.device)
    console.print(f"group: {k} member{'s' if k > 1 else ''}, width {cfg.model.width}, depth {cfg.model.depth}, "
                  f"heads {cfg.model.heads}, N = {count_params(cfg.model):,} non-embedding parameters, "
                  f"{cfg.train.steps} steps, {resolve_precision(cfg.train.precision, device)} on {device}"
                  f"{', compiled' if resolve_compile(cfg.train.compile, device) else ''}")
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


def _group_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("done, {task.fields[running]} running, {task.fields[left]} left"),
                    TimeRemainingColumn(), console=console)


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import sweep

    spec = sweep.load_spec(args.spec)
    groups = sweep.expand(spec)
    console.print(f"sweep: {len(groups)} groups, {sum(len(g.cfg.member_list()) for g in groups)} runs")
    with _group_progress() as progress:
        results = sweep.run_sweep(spec, Path(args.out), workers=args.workers, progress=progress)
    console.print(f"{Path(args.out) / 'results.parquet'}: {results.height} rows")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from . import reproduce

    table = Table(title="experiments (proxyscale reproduce NAME)")
    for col in ("name", "title", "scales"):
        table.add_column(col, justify="left")
    for name in reproduce.names():
        exp = reproduce.load(name)
        table.add_row(name, exp["title"], ", ".join(exp["scales"]))
    console.print(table)
    return 0


def _short(col: str) -> str:
    """label.model.qk_layernorm -> qk_layernorm; member.warmup -> warmup."""
    return col.removeprefix("label.").removeprefix("member.").split(".")[-1]


def sensitivity_table(rows: list[dict], title: str) -> Table:
    """The LR-sensitivity rows of an experiment, narrow enough for an 80-column terminal."""
    table = Table(title=title)
    if not rows:
        return table
    keys = [k for k in rows[0] if k.startswith(("label.", "member."))]
    keys = list({_short(k): k for k in reversed(keys)}.values())[::-1]  # one column per short name
    shown = [(k, _short(k)) for k in keys] + [("lr_sensitivity", "LR sensitivity"), ("best_lr", "best LR"),
                                                ("best_loss", "best loss"), ("diverged", "diverged")]
    for _, head in shown:
        table.add_column(head, justify="right", overflow="fold")
    for r in rows:
        table.add_row(*[(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k])) for k, _ in shown])
    return table


def cmd_reproduce(args: argparse.Namespace) -> int:
    from . import report, reproduce

    names = reproduce.names() if args.name == "all" else [args.name]
    for name in names:
        exp = reproduce.load(name)
        if args.scale not in exp["scales"]:
            raise ConfigError(f"--scale: {args.scale!r} not defined for {name}; valid: {', '.join(exp['scales'])}")
    out = Path(args.out)
    for name in names:
        console.rule(f"{name} ({args.scale})")
        with _group_progress() as progress:
            rec = reproduce.reproduce(name, args.scale, out, workers=args.workers, progress=progress)
        console.print(sensitivity_table(rec["sensitivity"], f"{name}: LR sensitivity per group of LRs"))
        for v in rec["verdicts"]:
            colour = "green" if v["verdict"] == "reproduced" else "red"
            console.print(f"[{colour}]{v['verdict']}[/{colour}]: {v['claim']}\n    {v['detail']}", highlight=False)
        console.print(f"{name}: {rec['seconds']:.0f} s")
    path = report.build(out)
    console.print(f"report: {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import report

    console.print(f"report: {report.build(Path(args.dir))}")
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
    p = sub.add_parser("sweep", help="run a declarative sweep (sizes x switches x member scalars) into DIR")
    p.add_argument("spec", help="sweep YAML: base, sizes, axes, members")
    p.add_argument("--out", required=True, help="sweep directory (finished groups are skipped)")
    p.add_argument("--workers", type=int, default=1, help="groups trained at once; each gets cores/N threads")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("list", help="list the paper's experiments")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("reproduce", help="run an experiment of the paper: sweep, figures, verdicts, report")
    p.add_argument("name", help="experiment name (see: proxyscale list) or all")
    p.add_argument("--scale", default="micro", choices=["micro", "mini", "small", "paper"],
                   help="micro: minutes on a CPU; mini: minutes per experiment on one GPU; small: one 80 GB GPU; "
                   "paper: the paper's schedule")
    p.add_argument("--out", default="runs/reproduce", help="output root (default runs/reproduce)")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("report", help="write DIR/report.html from reproduced experiments")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)
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
