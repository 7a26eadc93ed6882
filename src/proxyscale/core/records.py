"""Typed records for what crosses modules through files: a group's summary (``summary.json``, written by ``train``,
read by the results table, ``reproduce``, ``sweep`` and the CLI), an experiment's verdicts (``verdicts.json``,
written by ``reproduce``, ``forecast`` and the report's sweep and monitor sections, read by ``report`` and ``docs``)
and the verdicts of a forecast keyed by cause. Each is a dataclass with ``to_json``/``from_json``; ``write``/``read`` go
through the run store (atomic writes; a record that does not parse is ``ValueError``, which the readers turn into
"damaged, set aside"). No torch here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import store


def fields_of(cls: type, raw: Any, required: tuple[str, ...]) -> dict[str, Any]:
    """The fields of dataclass ``cls`` in the parsed JSON ``raw`` (unknown keys ignored, so older and newer files
    both read); ValueError naming what is missing, for the reader to set the file aside as damaged."""
    if not isinstance(raw, dict):
        raise ValueError("not a mapping")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ValueError(f"missing fields: {', '.join(missing)}")
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in known}


@dataclass
class GroupSummary:
    """``DIR/summary.json`` of a finished group: what it was, what ran it, and per member its scalars, ℓ0, final
    eval loss and divergence (``members``: one mapping per member, ``Member``'s fields and those four)."""

    n_params: int  # non-embedding parameters N (paper §3)
    vocab_size: int
    steps: int
    members: list[dict[str, Any]]
    lr_sensitivity: list[dict[str, Any]] = field(default_factory=list)  # per group of LRs (train.sensitivity_table)
    precision: str | None = None
    compiled: bool | None = None
    micro_batch_size: int | None = None
    device: str | None = None  # absent from summaries written before it was recorded
    threads: int | None = None
    seconds: float | None = None
    tokens_per_s: float | None = None

    REQUIRED = ("n_params", "vocab_size", "steps", "members")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> GroupSummary:
        """The summary, or ValueError naming what is missing."""
        fields = fields_of(cls, raw, cls.REQUIRED)
        if not isinstance(fields["members"], list):
            raise ValueError("members: not a list")
        return cls(**fields)

    @classmethod
    def read(cls, path: Path) -> GroupSummary:
        return cls.from_json(store.read_json(path))


@dataclass
class Verdict:
    """One claim and what the runs said of it: ``reproduced`` / ``not reproduced`` (claims), a forecast's
    ``likely`` / ``possible`` / ``unlikely`` / ``cannot forecast``, or a monitor's ``alarm at step s``."""

    claim: str
    verdict: str
    detail: str = ""

    @property
    def reproduced(self) -> bool:
        return self.verdict == "reproduced"


@dataclass
class ExperimentRecord:
    """``DIR/<experiment>/verdicts.json``: one section of the report."""

    name: str
    title: str
    scale: str
    command: str
    seconds: float  # training time of every group it needs, shared ones included (0 where nothing trained)
    figures: list[str]  # paths relative to the record's folder
    verdicts: list[Verdict]
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # the LR-sensitivity table's rows
    paper: str = ""
    why: str = ""
    wall_seconds: float | None = None
    groups: int | None = None
    runs: int | None = None
    group_rows: list[dict[str, Any]] = field(default_factory=list)  # reproduce.group_rows

    REQUIRED = ("name", "title", "scale", "command", "seconds", "figures", "verdicts")

    @property
    def reproduced(self) -> int:
        return sum(v.reproduced for v in self.verdicts)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, raw: Any) -> ExperimentRecord:
        """The record, or ValueError naming what is missing or malformed."""
        fields = fields_of(cls, raw, cls.REQUIRED)
        try:
            verdicts = [Verdict(**v) for v in fields["verdicts"]]
        except TypeError as err:
            raise ValueError(f"verdicts: {err}") from None
        return cls(**{**fields, "verdicts": verdicts})

    def write(self, path: Path) -> None:
        store.write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> ExperimentRecord:
        """``path`` parsed; OSError or ValueError (a damaged file) for the caller to set aside."""
        return cls.from_json(store.read_json(path))


def jsonable(x: Any) -> Any:
    """``x`` as JSON can hold it: fits (``analysis.fit_log`` coefficients, kept in memory for the figures) dropped,
    non-finite floats as null, dataclasses as mappings."""
    import math

    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items() if k != "fit"}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    return x


@dataclass
class ForecastRecord:
    """``DIR/forecast/forecast.json``: the forecast of one target run from a proxy ladder (``forecast.forecast``):
    each diagnostic's trend and its value at the target's N with an 80% interval (``trends``: ``{column: {ok, value,
    low, high, points, ...}}`` or ``{ok: false, why}``), the divergence LR and LR-sensitivity trends, the thresholds
    judged against, one verdict per cause, the warnings where the extrapolation breaks (``extrapolation``: a bend,
    the grid's edge, a regime change), and what was forecast from what; under ``--backtest`` the held-out size's
    score, with every scored case and its coverage (``backtest.cases``, ``backtest.coverage``); ``band``: how the
    80% bands were built (``extrapolation.BAND`` and its conformal factors)."""

    n_target: float
    lr: float
    trends: dict[str, dict[str, Any]]
    verdicts: list[dict[str, Any]]  # {cause, verdict, value, low, high, threshold, detail}: ``verdict(cause)``
    divergence_lr: dict[str, Any] = field(default_factory=dict)
    lr_sensitivity: dict[str, Any] = field(default_factory=dict)
    logit_threshold: float | None = None
    logit_threshold_source: str = ""
    log_z_threshold: float | None = None
    drift: dict[str, Any] = field(default_factory=dict)  # forecast.drift_forecast: the drift law at the target's clock
    warnings: list[dict[str, Any]] = field(default_factory=list)  # extrapolation: {kind, text, ...} where it breaks
    target: dict[str, Any] = field(default_factory=dict)
    ladder: dict[str, Any] = field(default_factory=dict)
    backtest: dict[str, Any] | None = None
    band: dict[str, Any] = field(default_factory=dict)  # forecast.band_record: how the 80% bands were built

    REQUIRED = ("n_target", "lr", "trends", "verdicts")

    def verdict(self, cause: str) -> dict[str, Any]:
        return verdicts_by_cause(self.verdicts)[cause]

    def to_json(self) -> dict[str, Any]:
        return jsonable({k: v for k, v in dataclasses.asdict(self).items() if v is not None or k == "log_z_threshold"})

    @classmethod
    def from_json(cls, raw: Any) -> ForecastRecord:
        return cls(**fields_of(cls, raw, cls.REQUIRED))

    def write(self, path: Path) -> None:
        store.write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> ForecastRecord:
        """``forecast.json`` (or the folder holding it) parsed; OSError or ValueError when it cannot be."""
        path = Path(path)
        return cls.from_json(store.read_json(path / "forecast.json" if path.is_dir() else path))


ATTENTION_LOGIT_GROWTH = "attention-logit growth"  # paper §3.1.1
OUTPUT_LOGIT_DIVERGENCE = "output-logit divergence"  # §3.1.2
UPDATE_COLLAPSE = "update collapse from ε"  # §3.4
DIVERGENCE_AT_LR = "divergence or degradation at the target LR"  # §3
FORECAST_CAUSES = (ATTENTION_LOGIT_GROWTH, OUTPUT_LOGIT_DIVERGENCE, UPDATE_COLLAPSE, DIVERGENCE_AT_LR)
"""The causes a forecast gives a verdict on, in the order it prints them (``forecast.forecast``)."""


def verdicts_by_cause(verdicts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A forecast's verdicts keyed by their cause; ValueError when a cause is missing or unknown."""
    by = {v["cause"]: v for v in verdicts}
    if set(by) != set(FORECAST_CAUSES):
        raise ValueError(f"forecast verdicts: causes {sorted(by)}; expected {list(FORECAST_CAUSES)}")
    return by
