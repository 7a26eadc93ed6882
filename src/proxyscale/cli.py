"""The ``proxyscale`` command."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .engine import threads
from .core import config as config_mod  # noqa: E402
from .engine.callbacks import Callback  # noqa: E402
from .core import store  # noqa: E402
from .core.config import MEMBER_SCALARS, ConfigError  # noqa: E402
from .experiments import FORECAST_LADDERS, SCALES  # noqa: E402
from .outputs.links import page  # noqa: E402
from .runs.progress import Lines  # noqa: E402
from .core.records import GroupSummary  # noqa: E402
from .core.seeds import NOISE, fold_spread  # noqa: E402
from .core.store import StoreError  # noqa: E402

console = Console(stderr=False)
errors = Console(stderr=True)


def _progress() -> Progress | Lines:
    """A group's progress: a bar on a terminal, else a line a minute (nohup, CI, a Slurm log: progress.Lines)."""
    if not console.is_terminal:
        return Lines()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[tps]:,.0f} tok/s"), TextColumn("max attn logit {task.fields[logit]:.3g}"),
                    TimeRemainingColumn(), console=console, transient=False)


def _fmt(x: float | None) -> str:
    return "nan" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"


def print_summary(summary: GroupSummary, title: str) -> None:
    members = summary.members
    varying = [n for n in MEMBER_SCALARS if len({m.get(n) for m in members}) > 1]

    def scalar(value: Any) -> str:  # a switch that is off (null) reads "off"
        return "off" if value is None else str(value) if isinstance(value, bool) else f"{value:g}"

    table = Table(title=title)
    table.add_column("member", justify="right")
    for n in varying:
        table.add_column(n, justify="right")
    for col in ("ℓ0", "final eval loss", "diverged"):
        table.add_column(col, justify="right")
    for m in members:
        div = f"yes (step {m['diverged_step']})" if m["diverged"] else "no"
        table.add_row(str(m["member"]), *[scalar(m[n]) for n in varying],
                      _fmt(m["l0"]), _fmt(m["final_eval_loss"]), div)
    console.print(table)
    for row in summary.lr_sensitivity:
        fixed = ", ".join(f"{n}={scalar(row[n])}" for n in varying if n != "lr" and n in row)
        lrs = ", ".join(f"{lr:g}" for lr in row["lrs"])
        console.print(f"LR sensitivity{' (' + fixed + ')' if fixed else ''} over LR {{{lrs}}}: "
                      f"[bold]{row['lr_sensitivity']:.4f}[/bold]")


class _Header(Callback):
    """The group's header line, printed once the group is set up (data loaded, memory planned, the run directory
    locked): every refusal comes before it, so a bad input is one line (issue 21 §4)."""

    def on_start(self, run: Any) -> None:
        k, m = len(run.members), run.cfg.model
        console.print(f"group: {k} member{'s' if k > 1 else ''}, width {m.width}, depth {m.depth}, heads {m.heads}, "
                      f"N = {run.n_params:,} non-embedding parameters, {run.cfg.train.steps} steps, {run.precision} "
                      f"on {run.device}{', compiled' if run.compiled else ''}"
                      + (f", resuming at step {run.next_step:,}" if run.next_step else ""))


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.train import train_group  # deferred: torch loads only for commands that train

    cfg = config_mod.load(args.config, args.set + ([f"train.log_to={args.log_to}"] if args.log_to else []))
    out = Path(args.out)
    progress = None if args.quiet else _progress()
    try:
        if progress:
            progress.start()
        summary, trained = train_group(cfg, out, progress=progress, callbacks=[_Header()])
    except KeyboardInterrupt:
        if progress:
            progress.stop()
        errors.print(f"{_interrupted_by()}; rerun the same command to resume {out} from its last checkpoint",
                     markup=False, highlight=False, soft_wrap=True)
        return _interrupted_code()
    finally:
        if progress:
            progress.stop()
    if not trained:
        console.print(f"{out} already holds this finished group; nothing to do (delete it to train again)")
    print_summary(summary, f"{out}: final eval loss per member (N = {summary.n_params:,})")
    return 0


def _group_progress() -> Progress | Lines:
    """A sweep's progress: a bar on a terminal, else a line per group started and finished with the ETA."""
    if not console.is_terminal:
        return Lines()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("done, {task.fields[running]} running, {task.fields[left]} left"),
                    TimeRemainingColumn(), console=console)


def _labels(labels: dict) -> str:
    return ", ".join(f"{_short(k)}={v}" for k, v in labels.items() if k != "size")


def plan_table(p: Any, title: str) -> Table:
    """One row per group: what it is, its cost, what the pool holds, the estimate."""
    from .runs.plan import fmt_count, fmt_seconds

    table = Table(title=title)
    switches = any(_labels(g.labels) for g in p.groups)
    heads = ["group", "size", *(["switches"] if switches else []), "K", "steps", "tokens", "FLOPs", "pool", "estimate"]
    for head in heads:
        table.add_column(head, justify="left" if head in ("group", "size", "switches", "pool") else "right",
                         overflow="fold")
    for g in p.groups:
        table.add_row(g.id[:6], str(g.labels.get("size", "")), *([_labels(g.labels)] if switches else []),
                      str(g.members), f"{g.steps:,}", fmt_count(g.tokens), fmt_count(g.flops), g.status,
                      fmt_seconds(g.seconds) if g.steps_left else "–")
    return table


def plan_line(p: Any) -> str:
    """The plan's totals in one line: groups by pool state, runs, tokens, FLOPs and the estimate."""
    from .runs.plan import fmt_count, fmt_seconds, summary

    t = summary(p)
    line = (f"{t['groups']} groups ({t['done']} done, {t['resuming']} resuming, {t['new']} new), {t['runs']} runs, "
            f"{fmt_count(t['tokens'])} tokens ({fmt_count(t['tokens_left'])} left), {fmt_count(t['flops'])} FLOPs")
    if p.probed:
        line += (f"; estimated {fmt_seconds(t['seconds'])} on {t['device']} (probe: {t['probe_seconds']:.0f} s, "
                 "eager, groups one after another)")
    return line


def _print_plan(p: Any, title: str) -> None:
    console.print(plan_table(p, title))
    console.print(plan_line(p))
    for g in p.groups:
        if g.note:
            console.print(f"[red]{g.id}[/red]: {g.note}", highlight=False)


def _plan_before_run(groups: list, pool: Path, title: str) -> None:
    """Every run prints its totals; a long one probes and prints its whole plan first."""
    from .runs import plan

    p = plan.make(groups, pool)
    if p.tokens_left > plan.LONG_TOKENS:
        plan.estimate(p)
        _print_plan(p, title)
    else:
        console.print(f"{title}: {plan_line(p)}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .runs import plan, sweep

    spec = sweep.with_log_to(sweep.load_spec(args.spec), args.log_to)
    if args.seeds is not None:
        spec = {**spec, "seeds": args.seeds}
    # every check before anything is written or printed
    groups, _, pool, _ = sweep.prepare(spec, args.out, None, _executor(args), check_memory=not args.plan)
    if args.plan:
        _print_plan(plan.make(groups, pool, probe=True), f"plan: {args.spec} into {args.out}")
        return 0
    _plan_before_run(groups, pool, f"sweep {args.spec}")
    record: dict[str, Any] = {}
    with _group_progress() as progress:
        results = sweep.run_sweep(spec, Path(args.out), progress=progress, executor=_executor(args), record=record)
    others = f" ({record['groups'] - record['trained']} finished already or by another sweep)" \
        if record["trained"] < record["groups"] else ""
    console.print(f"{Path(args.out) / 'results.parquet'}: {results.height} rows; trained here: {record['trained']} "
                  f"of {record['groups']} groups{others}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from . import experiments# the catalogue only: listing imports no torch, validates nothing

    table = Table(title="experiments (proxyscale reproduce NAME)")
    for col in ("name", "title", "scales"):
        table.add_column(col, justify="left")
    for name in experiments.names():
        exp = experiments.read(name)
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
    seeded = any((r.get("seeds") or 1) > 1 for r in rows)
    shown = [(k, _short(k)) for k in keys] + [("lr_sensitivity", "LR sensitivity" + (" (range)" if seeded else "")),
                                                ("best_lr", "best LR"), ("best_loss", "best loss"),
                                                *([("seeds", "seeds")] if seeded else []), ("diverged", "diverged")]
    for _, head in shown:
        table.add_column(head, justify="right", overflow="fold")
    for r in map(fold_spread, rows):
        table.add_row(*[(f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k))) for k, _ in shown])
    return table


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .runs import plan, sweep
    from .outputs import report
    from .jobs import reproduce
    from . import experiments

    names = experiments.SETS[args.name]() if args.name in experiments.SETS else [args.name]
    out = Path(args.out)
    store.check_dir(out)
    from .runs.executors import executor_config

    ex = executor_config(None, _executor(args))  # flags checked before anything runs
    groups = {}
    for name in names:
        exp = reproduce.load(name)
        groups[name] = sweep.expand(reproduce.sweep_spec(exp, args.scale, args.log_to, args.seeds))
        reproduce.resolved_claims(exp, args.scale, groups[name])  # a claim that matches no run fails here
    unique = list({g.id: g for gs in groups.values() for g in gs}.values())  # experiments share groups
    if not args.plan:  # a group too big for this machine: one line before anything is printed
        sweep.check_fits(unique, ex)
    if args.plan:
        p = plan.make(unique, out / "groups", probe=True)
        if len(names) == 1:
            _print_plan(p, f"plan: reproduce {args.name} --scale {args.scale} into {out}")
        else:
            _print_experiments_plan(p, groups, args.name, args.scale)
        return 0
    _plan_before_run(unique, out / "groups", f"reproduce {args.name} --scale {args.scale}")
    for name in names:
        console.rule(f"{name} ({args.scale})")
        with _group_progress() as progress:
            rec = reproduce.reproduce(name, args.scale, out, progress=progress, executor=_executor(args),
                                      log_to=args.log_to, seeds=args.seeds)
        console.print(sensitivity_table(rec.sensitivity, f"{name}: LR sensitivity per group of LRs"))
        for v in rec.verdicts:
            colour = "green" if v.reproduced else "yellow" if v.verdict == NOISE else "red"
            # the claim and its numbers as text: a "[one seed: ...]" in them is not rich markup
            console.print(f"[{colour}]{v.verdict}[/{colour}]: {escape(v.claim)}\n    {escape(v.detail)}",
                          highlight=False)
        console.print(f"{name}: {rec.seconds:.0f} s")
    if args.name == "beyond":
        summary = reproduce.summarise_beyond(out, args.scale)
        if summary is not None:
            console.print(f"beyond: summary figure {out / 'beyond' / summary.figures[0]}")
    path = report.build(out)
    console.print(f"report: {path}")
    return 0


def _print_experiments_plan(p: Any, groups: dict[str, list], name: str, scale: str) -> None:
    """``reproduce all|beyond --plan``: one row per experiment (shared groups appear in each), then the unique
    total."""
    from .runs.plan import Plan, fmt_count, fmt_seconds, summary

    by_id = {g.id: g for g in p.groups}
    table = Table(title=f"plan: reproduce {name} --scale {scale}")
    for head in ("experiment", "groups", "runs", "tokens", "FLOPs", "pool", "estimate"):
        table.add_column(head, justify="left" if head in ("experiment", "pool") else "right")
    for experiment, gs in groups.items():
        sub = Plan([by_id[g.id] for g in gs], p.device, probed=p.probed)
        t = summary(sub)
        table.add_row(experiment, str(t["groups"]), str(t["runs"]), fmt_count(t["tokens"]), fmt_count(t["flops"]),
                      f"{t['done']} done, {t['resuming']} resuming, {t['new']} new", fmt_seconds(t["seconds"]))
    console.print(table)
    console.print(f"{name} (shared groups once): {plan_line(p)}")
    for g in p.groups:
        if g.note:
            console.print(f"[red]{g.id}[/red] ({g.labels.get('size', '')}): {g.note}", highlight=False)


def cmd_forecast(args: argparse.Namespace) -> int:
    from .jobs import forecast
    from .runs import plan, sweep
    from .outputs import report
    from .runs.executors import executor_config

    out = Path(args.out)
    store.check_dir(out)

    target = forecast.load_target(args.target)  # a bad target fails before anything runs
    ex = executor_config(None, _executor(args))  # flags checked before anything runs
    ladder = sweep.expand(forecast.ladder_spec(target, args.scale, seeds=args.seeds))
    if not args.plan:
        sweep.check_fits(ladder, ex)
    switches = forecast.ladder_switches(target)
    trains_with = "; the ladder trains with " + (", ".join(f"{k.split('.')[-1]}={v}" for k, v in switches.items())
                                                 if switches else "every switch at its default")
    if args.plan:
        _print_plan(plan.make(ladder, out / "groups", probe=True),
                    f"plan: forecast {args.target} --scale {args.scale} into {out}{trains_with}")
        return 0
    _plan_before_run(ladder, out / "groups", f"forecast ladder ({args.scale}){trains_with}")
    with _group_progress() as progress:
        rec = forecast.run(args.target, args.scale, out, do_backtest=args.backtest, progress=progress,
                           executor=_executor(args), log_to=args.log_to, seeds=args.seeds)
    t = rec.target
    console.rule(f"forecast: d{t['width']}-L{t['depth']} (N = {t['n']:,.0f}) at LR {t['lr']:g}, "
                 f"from the {args.scale} ladder")
    colours = {"likely": "red", "possible": "yellow", "unlikely": "green"}
    for v in rec.verdicts:
        colour = colours.get(v["verdict"], "white")
        detail = escape(v["detail"]).replace("\n", "\n    ")  # a warning is a line of its verdict
        console.print(f"[{colour}]{v['cause']}: {v['verdict']}[/{colour}]\n    {detail}", highlight=False)
    if rec.band:
        console.print(forecast.band_text(rec.band), highlight=False)
    sens = rec.lr_sensitivity
    if sens.get("ok"):
        console.print(f"LR sensitivity at the target's N: {sens['value']:.3g} (80% interval {sens['low']:.3g}–"
                      f"{sens['high']:.3g})")
    bt = rec.backtest
    if bt:
        console.print(backtest_table(bt))
    console.print(f"{out / 'forecast' / 'forecast.json'}; report: {report.build(out)}")
    return 0


def backtest_table(bt: dict) -> Table | str:
    """The backtest: per LR, the held-out size's forecast logit against the measured one, and the verdicts."""
    if not bt.get("ok"):
        return f"backtest: cannot be made: {bt['why']}"
    table = Table(title=f"backtest: N = {bt['held_out_n']:,} held out, fitted on {len(bt['fit_n'])} smaller sizes")
    for head in ("LR", "logit forecast", "logit measured", "ratio", "forecast", "measured", "inside its 80% band"):
        table.add_column(head, justify="right")
    short = {"attn_logit_max/0": "logit", "grad_rms/layers.0.w1": "grad RMS", "log_z_mean": "log Z",
             "output_logit_mean": "mean logit"}
    for r in bt["rows"]:
        called = "–" if r["predicted_unstable"] is None else "unstable" if r["predicted_unstable"] else "stable"
        mine = [c for c in bt.get("cases") or [] if c.get("lr") == r["lr"] and c.get("seed") == r.get("seed", [])]
        outside = [short.get(c["quantity"], c["quantity"]) for c in mine if not c["inside"]]
        band = ("–" if not mine else f"{len(mine) - len(outside)}/{len(mine)}"
                + (f" (not: {', '.join(outside)})" if outside else ""))
        table.add_row(f"{r['lr']:g}", _fmt(r["predicted_logit"]), _fmt(r["measured_logit"]),
                      "–" if r["ratio"] is None else f"{r['ratio']:.2f}", called,
                      "unstable" if r["unstable"] else "stable", band)
    p, rc = bt["precision"], bt["recall"]
    cov = bt.get("coverage") or {}
    inside = "; ".join(f"{q} {c['inside']}/{c['cases']}" for q, c in (cov.get("per_quantity") or {}).items())
    o = cov.get("overall") or {}
    coverage = (f"; held-out values inside their 80% bands: {o['inside']}/{o['cases']} ({inside})"
                if o.get("cases") else "")
    table.caption = (f"verdicts right {bt['verdicts_right']}/{bt['verdicts']}; precision "
                     f"{'–' if p is None else f'{p:.2f}'}, recall {'–' if rc is None else f'{rc:.2f}'}; logit within "
                     f"2x at {bt['logit_within_2x']}/{bt['logits']} LRs" + coverage + drift_backtest_line(bt.get("drift") or {})
                     + drift_backtest_line(bt.get("drift_along_runs") or {}, "along the runs, each run's last value from the first half of its log I"))
    return table


def drift_backtest_line(laws: dict, how: str = "held out at the largest integrated LR") -> str:
    """A drift-law backtest (``drift.backtest``, ``drift.trajectory_backtest``): how many held-out runs fell inside
    the 80% band, per column, and how far the law extrapolated to them."""
    parts = [f"{c} inside its 80% band at {b['inside']}/{b['cases']} ({b['extrapolation']:.2g}x beyond the fit)"
             for c, b in laws.items() if b.get("ok")]
    return (f"; drift law {how}: " + "; ".join(parts)) if parts else ""


def cmd_report(args: argparse.Namespace) -> int:
    from .outputs import report

    root = Path(args.dir)
    store.check_dir(root, "report")
    if not root.exists():
        raise ConfigError(f"report {root}: no such directory; give a `reproduce --out` or `sweep --out` directory")
    console.print(f"report: {report.build(root)}")
    return 0


EXECUTOR_FLAGS = {  # flag: (ExecutorConfig field, type, help)
    "--executor": ("kind", str, "where groups train: local (default), ray or slurm (submitit job arrays)"),
    "--workers": ("workers", int, "local: groups trained at once; each gets cores/N threads"),
    "--cpus-per-group": ("cpus_per_group", int, "cores per group (0 = auto)"),
    "--gpus-per-group": ("gpus_per_group", float, "ray/slurm: GPUs per group (Ray accepts fractions)"),
    "--ray-address": ("ray_address", str, "ray: an existing cluster's address (default: a local Ray)"),
    "--slurm-partition": ("slurm_partition", str, "slurm: partition"),
    "--slurm-time": ("slurm_time_min", int, "slurm: time limit per group, minutes"),
    "--slurm-array-parallelism": ("slurm_array_parallelism", int, "slurm: array jobs running at once"),
    "--slurm-cluster": ("slurm_cluster", str, "slurm: auto, slurm, or local (submitit subprocesses, no cluster)"),
}


def _log_to_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-to", default=None, metavar="tensorboard,wandb",
                   help="also stream every recorded column to TensorBoard and/or W&B (offline) (train.log_to)")


def _seeds(text: str) -> int | list[int]:
    """``--seeds 3`` (init seeds 0, 1, 2) or ``--seeds 0,5,7``; checked by ``sweep.parse_seeds``."""
    try:
        return int(text) if "," not in text else [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (3) or a comma-separated list of seeds (0,5,7), got "
                                         f"{text!r}") from None


def _executor_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=_seeds, default=None, metavar="N|S1,S2,...",
                   help="init seeds on the member axis (replicates of every setting; verdicts and tables then report "
                   "the seed spread): a count or a list; overrides the spec's or the scale's seeds")
    _log_to_flag(p)
    for flag, (_, kind, text) in EXECUTOR_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, help=text + " (overrides the spec's executor section)")


def _executor(args: argparse.Namespace) -> dict[str, Any]:
    """The executor flags given on the command line, as ExecutorConfig fields (None = not given)."""
    return {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in EXECUTOR_FLAGS.items()}


class _Parser(argparse.ArgumentParser):
    """argparse with this tool's error style: one line on stderr, exit 2 (not usage + error on two lines)."""

    def error(self, message: str) -> NoReturn:
        errors.print(f"error: {self.prog}: {message} (see {self.prog} --help)", markup=False, highlight=False,
                     soft_wrap=True)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="proxyscale", description="Small-scale proxies for large-scale "
                     "Transformer training instabilities (Wortsman et al. 2023).",
                     epilog=f"documentation: {page('index')} (in the source tree; browse it offline with mkdocs serve); "
                     f"the configuration fields: {page('config')}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", epilog=f"docs: {page('train')}", help="train one group of K members (an LR grid, ...) from a YAML file")
    p.add_argument("config", help="group YAML: sections model, data, train, optim, members")
    p.add_argument("--out", required=True, help="run directory (resumed if interrupted, skipped if finished)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set optim.lr=0.01 --set members.lr=[0.001,0.01]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _log_to_flag(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sweep", epilog=f"docs: {page('sweep')}", help="run a declarative sweep (sizes x switches x member scalars) into DIR")
    p.add_argument("spec", help="sweep YAML: base, sizes, axes, members")
    p.add_argument("--out", required=True, help="sweep directory (finished groups are skipped)")
    _executor_flags(p)
    p.add_argument("--plan", action="store_true", help="print the groups, tokens, FLOPs, what DIR already holds "
                   "and a wall-time estimate from a short probe; train nothing")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("list", epilog=f"docs: {page('reproduce')}", help="list the paper's experiments")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("reproduce", epilog=f"docs: {page('reproduce')}", help="run an experiment of the paper: sweep, figures, verdicts, report")
    p.add_argument("name", help="experiment name (see: proxyscale list), all (the paper's) or beyond (the "
                   "mitigations after it)")
    p.add_argument("--scale", default="micro", choices=list(SCALES),
                   help="micro: minutes on a CPU; mini: minutes per experiment on one GPU; small: one 80 GB GPU; "
                   "paper: the paper's schedule")
    p.add_argument("--out", default="runs/reproduce", help="output root (default runs/reproduce)")
    _executor_flags(p)
    p.add_argument("--plan", action="store_true", help="print the groups, tokens, FLOPs, what the output root "
                   "already holds and a wall-time estimate from a short probe; train nothing")
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("forecast", epilog=f"docs: {page('forecast')}", help="forecast a target run's instabilities from a ladder of proxies")
    p.add_argument("target", help="group YAML of the run to forecast (its optim.lr is the target LR)")
    p.add_argument("--scale", default="micro", choices=list(FORECAST_LADDERS), help="the ladder to train")
    p.add_argument("--out", default="runs/forecast", help="output root (default runs/forecast)")
    p.add_argument("--backtest", action="store_true", help="also hold out the ladder's largest size and score "
                   "the forecast on it")
    _executor_flags(p)
    p.add_argument("--plan", action="store_true", help="print the ladder's groups, tokens, FLOPs, what the output "
                   "root already holds and a wall-time estimate from a short probe; train nothing")
    p.set_defaults(func=cmd_forecast)
    p = sub.add_parser("report", epilog=f"docs: {page('reproduce')}", help="write DIR/report.html from reproduced experiments")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)
    return parser


_SIGNAL: list[int] = []  # the signal that interrupted the command, if it was not Ctrl-C


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (what Slurm, Kubernetes and ``timeout`` send) is handled like Ctrl-C: checkpoints are kept."""
    _SIGNAL.append(signum)
    raise KeyboardInterrupt


def _interrupted_by() -> str:
    return "interrupted (SIGTERM)" if _SIGNAL else "interrupted"


def _interrupted_code() -> int:
    return 128 + (_SIGNAL[0] if _SIGNAL else signal.SIGINT)


TRAINING_COMMANDS = ("cmd_train", "cmd_sweep", "cmd_reproduce", "cmd_forecast")
"""The commands whose OpenMP wait policy follows the machine's load at start (``threads.set_wait_policy``)."""


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad argument (2, already said in one line)
        return int(exit_.code or 0)
    # before anything imports torch (OpenMP reads it once, at start): commands that train measure the free cores
    trains = args.func.__name__ in TRAINING_COMMANDS and not getattr(args, "plan", False)
    threads.set_wait_policy(threads.free_cores() if trains else None)
    try:
        return args.func(args)
    except ConfigError as err:
        errors.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except StoreError as err:
        errors.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        errors.print(f"{_interrupted_by()}; rerun the same command to resume: finished groups are kept and "
                     "unfinished ones resume from their last checkpoint", markup=False, highlight=False, soft_wrap=True)
        return _interrupted_code()


if __name__ == "__main__":
    sys.exit(main())
