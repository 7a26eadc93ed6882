"""Claim checks: functions over a results table that return a verdict with the numbers behind it.

An experiment file names a check and its arguments; the check never sees the paper's numbers, only the
runs. A claim that fails at micro scale is reported as *not reproduced*, with the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from .analysis import sensitivity_frame


@dataclass
class Verdict:
    claim: str
    reproduced: bool
    detail: str

    @property
    def label(self) -> str:
        return "reproduced" if self.reproduced else "not reproduced"


CHECKS: dict[str, Callable[..., tuple[bool, str]]] = {}


def check(fn: Callable[..., tuple[bool, str]]) -> Callable[..., tuple[bool, str]]:
    CHECKS[fn.__name__] = fn
    return fn


def _col(axis: str) -> str:
    return axis if axis.startswith(("label.", "member.")) else f"label.{axis}"


def _sens(results: pl.DataFrame, axis: str) -> pl.DataFrame:
    return sensitivity_frame(results, ["label.size", _col(axis)]).sort("n_params")


@check
def sensitivity_lower(results: pl.DataFrame, axis: str, better: Any, worse: Any, at_least: str = "all") -> tuple[bool, str]:
    """The LR sensitivity with ``axis == better`` is below that with ``axis == worse`` at every size (or most)."""
    s = _sens(results, axis)
    c = _col(axis)
    good = s.filter(pl.col(c) == better).select("label.size", "n_params", pl.col("lr_sensitivity").alias("a"))
    bad = s.filter(pl.col(c) == worse).select("label.size", pl.col("lr_sensitivity").alias("b"))
    both = good.join(bad, on="label.size").sort("n_params")
    wins = [a < b for a, b in zip(both["a"], both["b"])]
    ok = all(wins) if at_least == "all" else sum(wins) > len(wins) / 2
    pairs = "; ".join(f"{s}: {a:.3f} vs {b:.3f}" for s, a, b in zip(both["label.size"], both["a"], both["b"]))
    return ok and len(wins) > 0, f"LR sensitivity {axis}={better} vs {worse} — {pairs}"


@check
def sensitivity_increases_with_n(results: pl.DataFrame, axis: str, value: Any) -> tuple[bool, str]:
    """With ``axis == value``, the LR sensitivity of the largest size exceeds that of the smallest."""
    s = _sens(results, axis).filter(pl.col(_col(axis)) == value)
    vals = s["lr_sensitivity"].to_list()
    detail = ", ".join(f"{n / 1e3:.0f}k: {v:.3f}" for n, v in zip(s["n_params"], vals))
    return len(vals) >= 2 and vals[-1] > vals[0], f"{axis}={value}: sensitivity by N — {detail}"


@check
def ratio_at_least(results: pl.DataFrame, column: str, axis: str, high: Any, low: Any, factor: float,
                   lr: float | None = None) -> tuple[bool, str]:
    """mean(column | axis == high) >= factor · mean(column | axis == low), at LR ``lr`` if given, every size."""
    r = results if lr is None else results.filter((pl.col("member.lr") - lr).abs() < 1e-12 * max(1.0, lr))
    c = _col(axis)
    parts, ok = [], True
    for size, part in r.group_by("label.size", maintain_order=True):
        hi = part.filter(pl.col(c) == high)[column].mean()
        lo = part.filter(pl.col(c) == low)[column].mean()
        if hi is None or lo is None:
            continue
        ok &= hi >= factor * lo
        parts.append(f"{size[0]}: {hi:.3g} vs {lo:.3g} ({hi / lo if lo else float('inf'):.1f}x)")
    return ok and bool(parts), f"{column} with {axis}={high} vs {low}{' at LR ' + format(lr, 'g') if lr else ''} (need ≥{factor:g}x) — " + "; ".join(parts)


def evaluate(claims: list[dict[str, Any]], results: pl.DataFrame) -> list[Verdict]:
    out = []
    for c in claims:
        fn = CHECKS[c["check"]]
        try:
            ok, detail = fn(results, **c.get("args", {}))
        except Exception as err:  # a check that cannot be computed is not a reproduction
            ok, detail = False, f"could not be evaluated: {err.__class__.__name__}: {err}"
        out.append(Verdict(c["text"], bool(ok), detail))
    return out
