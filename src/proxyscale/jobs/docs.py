"""Render the generated parts of the docs: the configuration reference (docs/reference/config.md) from the field
docstrings of ``core.config``, and the verdict tables (docs/reproducing.md, docs/beyond.md): one source of truth."""

from __future__ import annotations

import ast
import dataclasses
import inspect

from ..core import config


def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} read from the string literal under each field of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


def config_reference() -> str:
    lines = []
    for section, cls in config.SECTIONS.items():
        lines += [f"**`{section}`**", "", "| field | default | meaning |", "|---|---|---|"]
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            lines.append(f"| `{f.name}` | `{f.default!r}` | {docs.get(f.name, '').replace('|', '/')} |")
        lines.append("")
    member_doc = field_docs(config.GroupConfig)["members"]
    lines += ["**`members`**", "", member_doc + " Member scalars: " + ", ".join(f"`{n}`" for n in config.MEMBER_SCALARS) + ".", ""]
    from ..runs.executors import ExecutorConfig

    lines += ["**`executor`** (a sweep spec's section; `sweep`/`reproduce`/`forecast` flags override it)", "",
              "| field | default | meaning |", "|---|---|---|"]
    docs = field_docs(ExecutorConfig)
    for f in dataclasses.fields(ExecutorConfig):
        lines.append(f"| `{f.name}` | `{f.default!r}` | {docs.get(f.name, '').replace('|', '/')} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference())


def experiments_table(roots: dict[str, str], which: str = "all") -> str:
    """Markdown table of reproduced experiments: one column per scale that was run (``{scale: output root}``, e.g.
    ``{"micro": "runs/reproduce"}``), each with the measured runtime and the verdict per claim; ``which``: the
    paper's experiments (``all``) or the mitigations after it (``beyond``)."""
    from pathlib import Path

    from ..experiments import SETS
    from ..core.records import ExperimentRecord
    from .reproduce import load

    lines = ["| experiment | command | " + " | ".join(f"`--scale {scale}`: runtime, verdicts" for scale in roots) + " |",
             "|---|---|" + "---|" * len(roots)]
    for name in SETS[which]():  # all: the paper's experiments; beyond: the mitigations after it
        cells = []
        for scale, root in roots.items():
            path = Path(root) / name / "verdicts.json"
            if not path.exists():
                cells.append("not run")
                continue
            rec = ExperimentRecord.read(path)
            mark = {"reproduced": "✔", "within seed noise": "≈"}  # else ✘ (not reproduced)
            claims = "; ".join(f"{mark.get(v.verdict, '✘')} {v.claim}" for v in rec.verdicts)
            cells.append(f"{rec.seconds / 60:.1f} min · {rec.reproduced}/{len(rec.verdicts)}: {claims}")
        title = load(name)["title"]
        title = title.removeprefix("Beyond the paper: ").split(" (")[0] if which == "beyond" else title.split(":")[0]
        row = [title, f"`proxyscale reproduce {name}`", *(c.replace("|", "\\|") for c in cells)]
        lines.append("| " + " | ".join(row) + " |")  # a '|' inside a cell would split the markdown table
    return "\n".join(lines)
