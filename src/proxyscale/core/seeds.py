"""Seeds as replicates: which rows of a results table repeat one setting, the spread of a number over them, and the
rule that judges a claim against that spread (issue 22).

A *seed* here is either of two things, and the results table says which (``table.SEED_COLUMNS``):
- an init seed (``member.seed``): members of one group, so seeds ride the member axis (``seeds: 3`` in a sweep or
  an experiment file expands to ``members.seed: [0, 1, 2]``), every seed seeing the same batches;
- a data-order seed (``label.train.seed``, an axis over ``train.seed``): separate groups.
Rows that differ only in these columns are replicates of one setting; everything in this module groups by the
other columns and summarises over these.

**The seed-noise rule** (chosen before the laptop runs with seeds were read; the claim checks in ``claims`` use it).
For a claim about a difference (“qk-layernorm lowers LR sensitivity at every size”: worse − better at a size) or
a trend (“LR sensitivity grows with N”: the least-squares slope of sensitivity against log10 N), compute the
statistic once per seed (paired: the same seed on both sides), then its mean m over the n seeds and the 80% interval
m ± t · s / √n (s the standard deviation over seeds, t Student's 0.9 quantile with n − 1 degrees of freedom, the
same 80% two-sided level as the forecast's intervals, ``instability.t80``). Then:
- **reproduced**: the whole interval lies on the claim's side of 0;
- **not reproduced**: the whole interval lies on the other side (the data say the opposite);
- **within seed noise**: the interval contains 0, so the seeds do not tell the claim from its opposite.
A claim “at every size” is reproduced when every size is, not reproduced when some size is not reproduced, and
within seed noise otherwise. With one seed there is no spread: the point value decides between reproduced and not
reproduced, as before seeds existed, and the detail says that the seed noise was not measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from .instability import t80
from .table import replicate_columns

REPRODUCED, NOT_REPRODUCED, NOISE = "reproduced", "not reproduced", "within seed noise"
"""The three verdicts of a claim judged against seed noise."""


def seed_keys(frame: pl.DataFrame) -> list[tuple]:
    """Each row's replicate key (its values of the varying seed columns; ``()`` where there is one seed)."""
    cols = replicate_columns(frame)
    return [tuple(r) for r in frame.select(cols).rows()] if cols else [()] * frame.height


def count(results: pl.DataFrame) -> int:
    """How many replicates the table holds (1 when no seed column varies)."""
    cols = replicate_columns(results)
    return results.select(cols).unique().height if cols else 1


def over_seeds(frame: pl.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pl.DataFrame:
    """One row per combination of ``by``: each of ``columns`` as its mean over the replicates, with ``COL_min`` and
    ``COL_max`` (the spread reported with it) and ``seeds`` (how many replicates had a finite value of the first
    column). Non-finite values are left out of a column's mean and range."""
    by = list(by)
    present = [c for c in columns if c in frame.columns]
    aggs = []
    for c in present:
        finite = pl.col(c).filter(pl.col(c).is_finite())
        aggs += [finite.mean().alias(c), finite.min().alias(f"{c}_min"), finite.max().alias(f"{c}_max")]
    if present:
        aggs.append(pl.col(present[0]).filter(pl.col(present[0]).is_finite()).len().alias("seeds"))
    return frame.group_by(by, maintain_order=True).agg(aggs)


@dataclass(frozen=True)
class Spread:
    """A statistic over seeds: mean, the 80% interval of the mean (``low``/``high``; equal to the mean for one
    seed), its range over the seeds, and the number of seeds."""

    mean: float
    low: float
    high: float
    lo: float
    hi: float
    n: int

    def text(self, fmt: str = ".3f") -> str:
        if self.n < 2:
            return f"{self.mean:{fmt}} (1 seed)"
        return (f"{self.mean:{fmt}} (80% interval {self.low:{fmt}} to {self.high:{fmt}}; range {self.lo:{fmt}} to "
                f"{self.hi:{fmt}} over {self.n} seeds)")


def spread(values: Sequence[float]) -> Spread:
    """``values`` (one per seed, non-finite ones dropped) as a ``Spread``; NaN everywhere when none is finite."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        nan = float("nan")
        return Spread(nan, nan, nan, nan, nan, 0)
    n, m = len(xs), sum(xs) / len(xs)
    if n < 2:
        return Spread(m, m, m, m, m, 1)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = t80(n - 1) * sd / math.sqrt(n)
    return Spread(m, m - half, m + half, min(xs), max(xs), n)


def judge(s: Spread, sign: int = 1) -> str:
    """The seed-noise rule (module doc) for one statistic whose claimed sign is ``sign``."""
    if s.n == 0:
        return NOT_REPRODUCED
    low, high = (s.low, s.high) if sign > 0 else (-s.high, -s.low)
    if s.n < 2:
        return REPRODUCED if low > 0 else NOT_REPRODUCED
    if low > 0:
        return REPRODUCED
    if high < 0:
        return NOT_REPRODUCED
    return NOISE


def judge_all(states: Sequence[str], at_least: str = "all") -> str:
    """Several statistics that must each hold (``all``, e.g. every size) or hold in a majority (``most``)."""
    if not states:
        return NOT_REPRODUCED
    if at_least == "all":
        if all(s == REPRODUCED for s in states):
            return REPRODUCED
        return NOT_REPRODUCED if NOT_REPRODUCED in states else NOISE
    half = len(states) / 2
    if sum(s == REPRODUCED for s in states) > half:
        return REPRODUCED
    if sum(s != NOT_REPRODUCED for s in states) <= half:  # a majority clearly against
        return NOT_REPRODUCED
    return NOISE


def fold_spread(row: dict, fmt: str = ".4g") -> dict:
    """A summary row for display: each ``COL`` with ``COL_min``/``COL_max`` becomes one cell, ``mean (min–max)``
    over the seeds (just the value where there is one seed); the other cells as they are."""
    out = {}
    n = row.get("seeds")
    for key, value in row.items():
        if key.endswith(("_min", "_max")) and key[:-4] in row:
            continue
        lo, hi = row.get(f"{key}_min"), row.get(f"{key}_max")
        if isinstance(value, float) and lo is not None and hi is not None and n and n > 1:
            out[key] = f"{value:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"
        else:
            out[key] = value
    return out


def first_seed(results: pl.DataFrame) -> pl.DataFrame:
    """The rows of the first replicate only (the lowest seeds): for figures of curves, where every seed drawn would
    hide the others."""
    cols = replicate_columns(results)
    if not cols:
        return results
    first = results.select(cols).sort(cols).row(0)
    for c, v in zip(cols, first):
        results = results.filter(pl.col(c) == v)
    return results


def by_setting(results: pl.DataFrame) -> pl.DataFrame:
    """The results table with its seeds averaged: one row per setting (``table.variant_columns``) and LR, the final
    loss, ℓ0 and each diagnostic (``table.DIAGNOSTICS``) as its mean over seeds with ``COL_min``/``COL_max``, and
    ``seeds``. What ``sweep`` writes beside ``results.parquet`` as ``settings.parquet``."""
    from .table import DIAGNOSTICS, FINAL_LOSS, L0, LR, N_PARAMS, variant_columns

    keys = [*variant_columns(results), LR]
    columns = [FINAL_LOSS, L0, *DIAGNOSTICS]
    numeric = results.with_columns(pl.col(c).cast(pl.Float64) for c in columns if c in results.columns)
    spread = over_seeds(numeric, keys, columns)
    n = results.group_by(keys, maintain_order=True).agg(pl.col(N_PARAMS).first())
    return n.join(spread, on=keys, how="left", nulls_equal=True)
