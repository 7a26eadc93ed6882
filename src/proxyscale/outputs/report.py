"""A self-contained HTML report: per experiment its figures (inline), LR-sensitivity table, verdicts, command."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from ..core import store, table
from ..core.records import ExperimentRecord, Verdict
from ..core.seeds import NOISE, fold_spread
from .links import page

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f4f4f4} .ok{color:#11772d;font-weight:bold} .no{color:#b3261e;font-weight:bold}
code{background:#f4f4f4;padding:.1em .3em} img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.why{color:#555;font-size:.9em} .noise{color:#8a5a00;font-weight:bold}
"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]]) -> str:
    """Rows as an HTML table; a number with its range over seeds (``COL_min``/``COL_max``) in one cell."""
    if not rows:
        return "<p>no finished runs</p>"
    rows = [fold_spread(r) for r in rows]
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c.removeprefix('label.'))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(folder: Path, rec: ExperimentRecord, pool_link: str = "groups") -> str:
    parts = [f"<h2 id='{html.escape(rec.name)}'>{html.escape(rec.title)}</h2>",
             f"<p>{html.escape(rec.paper)}</p>",
             f"<p>Reproduce: <code>{html.escape(rec.command)}</code>"
             + (f" — scale <b>{rec.scale}</b>, {rec.seconds:.0f} s here" if rec.scale else "") + ".</p>",
             f"<p class='why'>{html.escape(rec.why)}</p>", "<ul>"]
    for v in rec.verdicts:
        cls = "ok" if v.reproduced else "noise" if v.verdict == NOISE else "no"
        parts.append(f"<li><span class='{cls}'>{v.verdict}</span>: {html.escape(v.claim)}<br>"
                     f"<small>{html.escape(v.detail)}</small></li>")
    parts.append("</ul>")
    for fig in rec.figures:
        if fig.endswith(".png"):
            try:
                data = base64.b64encode((folder / fig).read_bytes()).decode()
            except OSError:
                parts.append(f"<p class='no'>figure {html.escape(fig)} is missing; rerun to redraw it</p>")
                continue
            parts.append(f"<img alt='{html.escape(Path(fig).stem)}' src='data:image/png;base64,{data}'>")
    parts.append(_table(rec.sensitivity))
    if rec.group_rows:
        parts.append(_groups_table(rec.group_rows, pool_link))
    return "\n".join(parts)


def _groups_table(rows: list[dict[str, Any]], pool_link: str) -> str:
    """The groups behind an experiment, each linked to its folder in the pool, with what ran it."""
    precisions = sorted({f"{r.get('precision')} on {r.get('device')}" for r in rows})
    head = "".join(f"<th>{c}</th>" for c in ("group", "size", "switches", "members", "steps", "precision", "device",
                                            "threads", "seconds"))
    body = "".join(
        f"<tr><td><a href='{html.escape(pool_link)}/{html.escape(r['group'])}/'><code>{html.escape(r['group'])}</code></a>"
        f"</td>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in ("size", "switches", "members", "steps", "precision",
                                                                    "device", "threads", "seconds")) + "</tr>"
        for r in rows)
    return (f"<p>Ran in {html.escape(', '.join(precisions))}; each group links to its folder (config.json, "
            f"metrics.parquet, summary.json):</p><table><tr>{head}</tr>{body}</table>")


def _read_record(path: Path) -> ExperimentRecord | None:
    """A verdicts.json, checked: a damaged one is set aside (renamed, with a warning) and None returned."""
    try:
        return ExperimentRecord.read(path)
    except (OSError, ValueError) as err:
        store.set_aside(path, f"damaged {path} ({err.__class__.__name__})")
        return None


def _sweep_record(root: Path) -> ExperimentRecord:
    """A sweep directory as one report section: its LR-vs-loss figure and LR-sensitivity table, no claims."""
    import polars as pl

    from . import plots
    from ..core.analysis import sensitivity_summary

    try:
        results = pl.read_parquet(root / "results.parquet")
    except Exception as err:  # noqa: BLE001 - any read failure: the file is damaged
        store.set_aside(root / "results.parquet", f"damaged {root / 'results.parquet'} ({err.__class__.__name__})")
        raise store.StoreError(f"{root}: its results.parquet was damaged and set aside; rerun the sweep to rebuild "
                               "it (finished groups are not retrained)") from None
    by = table.variant_columns(results)
    figures = plots.lr_vs_loss(results, root / "figures" / "lr_vs_loss", title=root.name)
    name = (store.read_json(root / "spec.json") or {}).get("name", root.name) if (root / "spec.json").exists() else root.name
    return ExperimentRecord(name=str(name), title=f"sweep {name}", scale="", command=f"proxyscale sweep ... --out {root}",
                            seconds=0.0, figures=[str(p.relative_to(root)) for p in figures], verdicts=[],
                            sensitivity=sensitivity_summary(results, by).to_dicts())


def _monitor_record(root: Path) -> ExperimentRecord:
    """A monitored model (``proxyscale.monitor``) as one report section: its curves and its alarms."""
    import polars as pl

    from . import plots

    info, metrics = store.read_json(root / "monitor.json"), pl.read_parquet(root / "metrics.parquet")
    alarms = store.read_json(root / "alarms.json") if (root / "alarms.json").exists() else []
    logits = [c for c in metrics.columns if c.startswith("attn_logit_max/")]
    columns = [c for c in ("loss", *logits[:1], "log_z_mean", "grad_norm") if c in metrics.columns]
    figures = plots.curves_over_steps({info["model"]: metrics}, root / "figures" / "monitor", columns,
                                      f"monitor: {info['model']}", [False, True, False, True])
    return ExperimentRecord(name="monitor", title=f"Monitor: {info['model']} ({info['attention']})", scale="",
                            command="proxyscale.monitor.attach(...)", seconds=0.0,
                            figures=[str(p.relative_to(root)) for p in figures],
                            verdicts=[Verdict(a["cause"], f"alarm at step {a['step']}", a["message"]) for a in alarms])


def _group_record(root: Path) -> ExperimentRecord:
    """A finished ``proxyscale train`` folder as one report section: each member's curves (loss, the largest
    attention logit, log Z), the members' table and the group's LR sensitivity, no claims."""
    import polars as pl

    from . import plots
    from ..core.records import GroupSummary

    why = store.damage(root)
    if why is not None:
        raise store.StoreError(f"{root}: a finished group, but {why}; rerun proxyscale train into it to rebuild it",
                               exit_code=2)
    summary = GroupSummary.read(root / "summary.json")
    metrics = pl.read_parquet(root / "metrics.parquet")
    logits = sorted(c for c in metrics.columns if c.startswith("attn_logit_max/"))
    if logits:  # the largest attention logit over layers, one column to plot
        metrics = metrics.with_columns(pl.max_horizontal(logits).alias("attn_logit_max"))
    columns = [c for c in ("loss", "attn_logit_max", "log_z_mean") if c in metrics.columns]
    varying = [n for n in summary.members[0] if n not in ("member", "l0", "final_eval_loss", "diverged",
               "diverged_step") and len({str(m.get(n)) for m in summary.members}) > 1] if summary.members else []

    def label(m: dict[str, Any]) -> str:
        return ", ".join(f"{n}={m[n]:g}" if isinstance(m[n], float) else f"{n}={m[n]}" for n in varying) \
            or f"member {m['member']}"

    frames = {label(m): metrics.filter(pl.col("member") == m["member"]) for m in summary.members}
    figures = plots.curves_over_steps(frames, root / "figures" / "group", columns, f"group {root.name}",
                                      [False, True, False])
    rows = [{"member": m["member"], **{n: m[n] for n in varying}, "l0": m["l0"],
             "final eval loss": m["final_eval_loss"], "diverged": f"step {m['diverged_step']}" if m["diverged"]
             else "no"} for m in summary.members]
    sensitivity = "; ".join(
        "LR sensitivity" + (f" ({', '.join(f'{n}={r[n]}' for n in varying if n != 'lr' and n in r)})" if varying else "")
        + f" over LR {{{', '.join(f'{lr:g}' for lr in r['lrs'])}}}: {r['lr_sensitivity']:.4f}"
        for r in summary.lr_sensitivity)
    return ExperimentRecord(name=root.name, title=f"group {root.name}: {len(summary.members)} members, N = "
                            f"{summary.n_params:,}, {summary.steps:,} steps", scale="",
                            command=f"proxyscale train CONFIG.yaml --out {root}", seconds=summary.seconds or 0.0,
                            figures=[str(p.relative_to(root)) for p in figures], verdicts=[], sensitivity=rows,
                            why=sensitivity or "one LR per setting: no LR sensitivity (it needs at least two LRs)")


def _docs_note() -> str:
    """The page's last paragraph: where proxyscale's documentation explains what the report shows."""
    topics = [("what each experiment, figure and verdict means", "reproduce"), ("forecasts", "forecast"),
              ("the monitor", "monitor"), ("the configuration fields", "config")]
    items = ", ".join(f"{what}: <code>{html.escape(page(topic))}</code>" for what, topic in topics)
    return (f"<p class='docs'>Documentation, in proxyscale's source tree (<code>mkdocs serve</code> browses it "
            f"offline): {items}.</p>")


def build(root: Path) -> Path:
    """Write ``root/report.html`` from every ``root/<experiment>/verdicts.json`` (or ``root/verdicts.json``), from
    a sweep directory's ``results.parquet``, a monitor folder or a finished ``proxyscale train`` group folder.
    Damaged records are set aside and named in the page."""
    root = Path(root)
    from ..experiments import names

    order = {name: i for i, name in enumerate(names())}  # the paper's order, unknown names last
    records = sorted(root.glob("*/verdicts.json"), key=lambda p: (order.get(p.parent.name, len(order)), p.parent.name))
    records += [root / "verdicts.json"] if (root / "verdicts.json").exists() else []
    sweep_dir = not records and (root / "results.parquet").exists()
    monitor_dir = not records and (root / "monitor.json").exists()
    group_dir = not records and not sweep_dir and not monitor_dir and (root / "summary.json").exists()
    if not records and not sweep_dir and not monitor_dir and not group_dir:
        unfinished = (root / "config.json").exists()
        raise store.StoreError(
            f"{root}: a group that has not finished (no summary.json); rerun its proxyscale train command to finish it"
            if unfinished else f"{root}: no reproduced experiments (*/verdicts.json), sweep results (results.parquet), "
            "finished group (summary.json) or monitor (monitor.json) found; run proxyscale reproduce, sweep or train "
            "first", exit_code=2)
    sections, summary, damaged = [], [], []
    loaded = ([(root, _sweep_record(root))] if sweep_dir else [(root, _monitor_record(root))] if monitor_dir
              else [(root, _group_record(root))] if group_dir
              else [(path.parent, _read_record(path)) for path in records])
    for folder, rec in loaded:
        if rec is None:
            damaged.append(folder.name)
            continue
        sections.append(_section(folder, rec))
        summary.append({"experiment": rec.name, "scale": rec.scale,
                        "claims reproduced": f"{rec.reproduced}/{len(rec.verdicts)}", "seconds": rec.seconds})
    note = (f"<p class='no'>damaged and set aside (rerun to rebuild): {html.escape(', '.join(damaged))}</p>"
            if damaged else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>proxyscale report</title><style>{CSS}</style>"
            f"</head><body><h1>proxyscale: small-scale proxies for large-scale Transformer training instabilities</h1>"
            f"<p>Runs in <code>{html.escape(str(root))}</code>; every figure below was drawn from these runs.</p>"
            f"{note}{_table(summary)}{''.join(sections)}{_docs_note()}</body></html>")
    out = root / "report.html"
    store.write_atomic(out, page.encode())
    return out
