"""A self-contained HTML report: per experiment its figures (inline), LR-sensitivity table, verdicts, command."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from . import store

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f4f4f4} .ok{color:#11772d;font-weight:bold} .no{color:#b3261e;font-weight:bold}
code{background:#f4f4f4;padding:.1em .3em} img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.why{color:#555;font-size:.9em}
"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>no finished runs</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c.removeprefix('label.'))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(folder: Path, rec: dict[str, Any]) -> str:
    parts = [f"<h2 id='{html.escape(rec['name'])}'>{html.escape(rec['title'])}</h2>",
             f"<p>{html.escape(rec.get('paper', ''))}</p>",
             f"<p>Reproduce: <code>{html.escape(rec['command'])}</code> — scale <b>{rec['scale']}</b>, "
             f"{rec['seconds']:.0f} s here.</p>", f"<p class='why'>{html.escape(rec.get('why', ''))}</p>", "<ul>"]
    for v in rec["verdicts"]:
        cls = "ok" if v["verdict"] == "reproduced" else "no"
        parts.append(f"<li><span class='{cls}'>{v['verdict']}</span>: {html.escape(v['claim'])}<br>"
                     f"<small>{html.escape(v['detail'])}</small></li>")
    parts.append("</ul>")
    for fig in rec["figures"]:
        if fig.endswith(".png"):
            data = base64.b64encode((folder / fig).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(Path(fig).stem)}' src='data:image/png;base64,{data}'>")
    parts.append(_table(rec.get("sensitivity", [])))
    return "\n".join(parts)


def build(root: Path) -> Path:
    """Write ``root/report.html`` from every ``root/<experiment>/verdicts.json`` (or ``root/verdicts.json``)."""
    root = Path(root)
    from .reproduce import names

    order = {name: i for i, name in enumerate(names())}  # the paper's order, unknown names last
    records = sorted(root.glob("*/verdicts.json"), key=lambda p: (order.get(p.parent.name, len(order)), p.parent.name))
    records += [root / "verdicts.json"] if (root / "verdicts.json").exists() else []
    if not records:
        from .config import ConfigError

        raise ConfigError(f"{root}: no reproduced experiments found (expected */verdicts.json); run proxyscale reproduce first")
    sections, summary = [], []
    for path in records:
        rec = store.read_json(path)
        sections.append(_section(path.parent, rec))
        n_ok = sum(v["verdict"] == "reproduced" for v in rec["verdicts"])
        summary.append({"experiment": rec["name"], "scale": rec["scale"], "claims reproduced": f"{n_ok}/{len(rec['verdicts'])}",
                        "seconds": rec["seconds"]})
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>proxyscale report</title><style>{CSS}</style>"
            f"</head><body><h1>proxyscale: small-scale proxies for large-scale Transformer training instabilities</h1>"
            f"<p>Runs in <code>{html.escape(str(root))}</code>; every figure below was drawn from these runs.</p>"
            f"{_table(summary)}{''.join(sections)}</body></html>")
    out = root / "report.html"
    store.write_atomic(out, page.encode())
    return out
