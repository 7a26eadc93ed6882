"""The results table: one row per member of every finished group, and the one vocabulary to read it.

Claims, figures, ``reproduce``, ``sweep`` and ``train`` use only the public names of this module; nothing else
decides what a column is called, which rows sit "at LR x", or which fields identify a run.

Columns of a results table (``results.parquet``):

- ``group``, ``member``: the group's id (its folder in the pool) and the member's index in it.
- ``label.size`` (e.g. ``d64-L2 (99k)``), ``label.scaling`` (a named set of sizes, Fig 7) and
  ``label.<section.field>`` for every axis of the sweep, holding the *validated* config value (``off``, never the
  YAML boolean ``False``).
- ``<section>.<field>``: the group's whole validated config, flattened (``model.width``, ``optim.warmup`` ...).
- ``member.<scalar>``: the member's scalars (``member.lr``, ``member.warmup``, ... see ``config.MEMBER_SCALARS``).
- ``n_params`` (non-embedding N), ``l0`` (loss at initialisation), ``final_eval_loss`` (NaN when diverged),
  ``diverged``, ``diverged_step``.
- Diagnostics, each the member's mean over the last ``tail_steps`` logged steps (paper §3): the ``DIAGNOSTICS``
  names and ``block_rms/last``; ``attn_logit_max/0:max`` (the run's maximum) and ``attn_logit_max/0@step`` (the
  value at a fixed step, for the scaling prediction of Fig 9).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from . import config as config_mod
from .config import GroupConfig
from .records import GroupSummary

SIZE = "label.size"
"""The size label of a run's group (``ladder.size_label``: ``d64-L2``)."""
LR = "member.lr"
"""The run's peak LR (a member scalar)."""
N_PARAMS = "n_params"
"""Non-embedding parameters N (paper §3)."""
FINAL_LOSS = "final_eval_loss"
"""The final evaluation loss (NaN when it diverged to non-finite)."""
L0 = "l0"
"""ℓ0: the loss at initialisation (paper §3's cap)."""
DIVERGED = "diverged"
"""Whether the run diverged (frozen by the divergence check)."""
SEED_COLUMNS = ("member.seed", "label.train.seed")
"""The columns that tell one replicate of a setting from another (``seeds``): the init seed (a member scalar) and
the data-order seed (an axis over ``train.seed``). Rows differing only in these are one setting's seeds."""


LR_RTOL = 1e-9
"""Two learning rates (or any two float labels) are the same value when they agree to this relative tolerance."""

MEASURED = (N_PARAMS, L0, FINAL_LOSS, DIVERGED, "diverged_step", "output_logit_mean", "log_z_mean",
            "grad_norm")
"""Measured columns addressed by their bare names."""

DIAGNOSTICS = ("attn_logit_max/0", "q_norm/0", "k_norm/0", "output_logit_mean", "log_z_mean", "mu_norm",
               "lr_integral", "grad_norm", "grad_rms/layers.0.w1", "update_rms/layers.0.w1", "param_rms/layers.0.w1")
"""Per-step diagnostics reduced to one value per member (the mean over the tail of the run). ``lr_integral`` (Σ of
the LR so far) is averaged over the same steps as ``mu_norm``, so the two are one point of the drift law (``drift``)."""

NOT_IDENTITY = ("threads", "device", "log_to")
"""train.* fields that change where and how fast a group runs, or where its numbers are streamed, never its
results."""


# ---- the identity of a run ----------------------------------------------------------------------------------

def identity(config: GroupConfig | dict[str, Any]) -> dict[str, Any]:
    """The configuration that determines a group's results: the whole config but ``NOT_IDENTITY``."""
    d = json.loads(json.dumps(config.to_dict() if isinstance(config, GroupConfig) else config))
    d["train"] = {k: v for k, v in d["train"].items() if k not in NOT_IDENTITY}
    for path, off in config_mod.OFF_BY_DEFAULT.items():  # fields added later, where they change nothing
        section, _, name = path.partition(".")
        if name in d.get(section, {}) and d[section][name] == off:
            del d[section][name]
    return d


def run_id(cfg: GroupConfig) -> str:
    """A group's id: a hash of its identity (its folder name in a pool)."""
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:12]


def same_run(a: GroupConfig | dict[str, Any], b: GroupConfig | dict[str, Any]) -> bool:
    """Whether two configs give the same results (they may differ in threads and device)."""
    return identity(a) == identity(b)


# ---- names and values ---------------------------------------------------------------------------------------

def col(name: str) -> str:
    """The column for ``name``: ``label.*``, ``member.*``, diagnostics (``a/b``, ``DIAGNOSTICS``) and measured
    columns as they are; a config path such as ``model.qk_layernorm`` means its label column."""
    if name.startswith(("label.", "member.")) or "/" in name or name in MEASURED or name in DIAGNOSTICS \
            or name in ("group", "member"):
        return name
    return f"label.{name}"


def value(name: str, raw: Any) -> Any:
    """``raw`` as the column ``name`` holds it: a config path's value is validated like the config does (so an
    unquoted YAML ``off`` in a claim means ``"off"``); other values pass unchanged."""
    path = col(name).removeprefix("label.").removeprefix("member.")
    if isinstance(raw, list):
        return [value(name, v) for v in raw]
    return config_mod.coerce_path(path, raw) if config_mod.is_path(path) else raw


def is_(name: str, raw: Any) -> pl.Expr:
    """Rows whose column ``name`` equals ``raw`` (floats to ``LR_RTOL``)."""
    c, v = pl.col(col(name)), value(name, raw)
    if v is None:  # a switch that is off (``members.qk_clip: null``)
        return c.is_null()
    if isinstance(v, float) and not isinstance(v, bool):
        return (c - v).abs() <= LR_RTOL * max(abs(v), 1e-300)
    return c == v


def where(results: pl.DataFrame, cond: dict[str, Any] | None) -> pl.DataFrame:
    """Rows matching every condition: ``{column: value}`` (equality, see ``is_``) or ``{column: {min, max}}``."""
    for name, c in (cond or {}).items():
        if isinstance(c, dict):
            if "min" in c:
                results = results.filter(pl.col(col(name)) >= c["min"])
            if "max" in c:
                results = results.filter(pl.col(col(name)) <= c["max"])
        else:
            results = results.filter(is_(name, c))
    return results


def at_lr(results: pl.DataFrame, lr: float) -> pl.DataFrame:
    """The rows trained at peak LR ``lr``."""
    return results.filter(is_(LR, float(lr)))


def sizes(results: pl.DataFrame) -> list[str]:
    """The size labels present, smallest N first."""
    return results.sort(N_PARAMS)[SIZE].unique(maintain_order=True).to_list()


def replicate_columns(results: pl.DataFrame) -> list[str]:
    """The ``SEED_COLUMNS`` of ``results`` that take more than one value: what tells one replicate from another."""
    return [c for c in SEED_COLUMNS if c in results.columns and results[c].n_unique() > 1]


def variant_columns(results: pl.DataFrame) -> list[str]:
    """The columns that tell one setting's LR curve from another: the size, every other label, and the member
    scalars that vary, besides the LR and the seeds (``SEED_COLUMNS``: replicates of a setting, not settings).
    LR-sensitivity tables are keyed by these."""
    by = [SIZE] + [c for c in results.columns if c.startswith("label.") and c not in (SIZE, *SEED_COLUMNS)]
    return by + [c for c in results.columns if c.startswith("member.") and c not in (LR, *SEED_COLUMNS)
                 and results[c].n_unique() > 1]


def values(results: pl.DataFrame, name: str) -> list[Any]:
    """The distinct values of column ``name`` in order of appearance."""
    return results[col(name)].unique(maintain_order=True).to_list()


# ---- building the table from a pool of finished groups ---------------------------------------------------------

def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b": value}; lists (the member grids) are left out."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def member_rows(cfg: GroupConfig, gid: str, labels: dict[str, Any], folder: Path, tail_steps: int | None = None,
                at_step: int | None = None) -> list[dict[str, Any]]:
    """One row per member of the finished group in ``folder``: labels, the group's flattened config, the member's
    scalars, ℓ0, final loss, flags and diagnostics averaged over the last ``tail_steps`` steps (default a fifth of
    the run, at most 500, paper §3)."""
    summary = GroupSummary.read(folder / "summary.json")
    metrics = pl.read_parquet(folder / "metrics.parquet")
    steps = summary.steps
    tail = tail_steps or max(1, min(500, steps // 5))
    last_block = f"block_rms/{cfg.model.depth - 1}"
    rows = []
    for m in summary.members:
        mine = metrics.filter(pl.col("member") == m["member"])
        window = mine.filter((pl.col("step") >= steps - tail) & (pl.col("step") < steps))
        row = _known_row(cfg, gid, labels, m["member"], m)
        row.update({N_PARAMS: summary.n_params, L0: m["l0"],  # the summary's member keys -> the table's columns
                    FINAL_LOSS: m["final_eval_loss"] if m["final_eval_loss"] is not None else float("nan"),
                    DIVERGED: m["diverged"], "diverged_step": m["diverged_step"]})
        for name in (*DIAGNOSTICS, last_block):
            row["block_rms/last" if name == last_block else name] = (window[name].mean() if name in window.columns
                                                                     else None)
        row.update(mitigation_columns(mine, m, steps))
        if "attn_logit_max/0" in mine.columns:
            row["attn_logit_max/0:max"] = mine["attn_logit_max/0"].max()
            if at_step is not None:  # the scaling prediction reads the logit at a fixed step (paper §3, Fig 9)
                at = mine.filter(pl.col("step") == at_step)["attn_logit_max/0"]
                row["attn_logit_max/0@step"] = at[0] if len(at) else None
        rows.append(row)
    return rows


MITIGATION_COLUMNS = ("attn_logit_max/all:max", "attn_logit_max_capped/all:max", "qk_clip_fraction", "qk_clip_delta",
                      "zclip_fraction")
"""What the post-paper switches are judged by, per member: the max attention logit over every layer and step, before
and after a soft-cap; the fraction of logged steps on which QK-clip clipped a head; QK-clip's δ, the largest
max-logit/τ − 1 on any step after it first clipped (its bound τ·(1+δ)); the fraction of steps ZClip clipped."""


def mitigation_columns(metrics: pl.DataFrame, member: dict[str, Any], steps: int) -> dict[str, Any]:
    """``MITIGATION_COLUMNS`` of one member from its per-step ``metrics`` (those its switches did not record: absent)."""
    out: dict[str, Any] = {}
    train = metrics.filter(pl.col("loss").is_not_null()) if "loss" in metrics.columns else metrics
    layers = {stem: [c for c in train.columns if c.startswith(stem + "/") and c.split("/")[1].isdigit()]
              for stem in ("attn_logit_max", "attn_logit_max_capped")}  # per layer: attn_logit_max/0, /1, ...
    for stem, columns in layers.items():
        if columns:
            out[f"{stem}/all:max"] = train.select(pl.max_horizontal(columns).max()).item()
    if "qk_clip_heads" in train.columns and train.height:
        heads = train["qk_clip_heads"].fill_null(0.0)
        out["qk_clip_fraction"] = float((heads > 0).mean())
        tau, fired = member.get("qk_clip"), train.filter(heads > 0)
        if tau and fired.height and layers["attn_logit_max"]:
            after = train.filter(pl.col("step") > fired["step"].min())
            peak = after.select(pl.max_horizontal(layers["attn_logit_max"]).max()).item() if after.height else None
            out["qk_clip_delta"] = peak / tau - 1.0 if peak is not None else None
    if "zclip_clips" in train.columns and train.height:
        out["zclip_fraction"] = float(train["zclip_clips"].drop_nulls().max() or 0.0) / steps
    return out


_MEMBER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(config_mod.Member)
                    if f.default is not dataclasses.MISSING}
"""The member scalars with a default (those added after the paper, off), read into rows of older summaries."""


def _known_row(cfg: GroupConfig, gid: str, labels: dict[str, Any], member: int, scalars: Any) -> dict[str, Any]:
    """The columns of a member's row that are known before it trains: group, member, labels, the flattened config
    and the member's scalars (``scalars``: a mapping or a ``config.Member``)."""
    flat = {k: v for k, v in flatten(identity(cfg)).items() if not k.startswith("members.")}
    # an older summary lacks the scalars added after the paper: those were off (``Member``'s defaults)
    get = (lambda k: scalars.get(k, _MEMBER_DEFAULTS.get(k))) if isinstance(scalars, dict) else \
        lambda k: getattr(scalars, k)
    return {"group": gid, "member": member, **{f"label.{k}": v for k, v in labels.items()}, **flat,
            **{f"member.{k}": get(k) for k in config_mod.MEMBER_SCALARS}}


def planned(groups: list[Any]) -> pl.DataFrame:
    """The rows a sweep's groups (``sweep.Group``: id, cfg, labels) will have, with only the columns known before
    anything trains (see ``_known_row``): what a claim can be checked against at ``--plan`` time."""
    return frame([_known_row(g.cfg, g.id, g.labels, i, m) for g in groups for i, m in enumerate(g.cfg.member_list())])


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def curves(results: pl.DataFrame, pool: Path) -> dict[tuple[str, int], pl.DataFrame]:
    """The per-step metrics of each row's member, keyed by (group, member); ``pool`` holds the group folders."""
    out, cache = {}, {}
    for row in results.select("group", "member").iter_rows():
        gid, member = row
        if gid not in cache:
            cache[gid] = pl.read_parquet(pool / gid / "metrics.parquet")
        out[(gid, member)] = cache[gid].filter((pl.col("member") == member) & pl.col("loss").is_not_null())
    return out
