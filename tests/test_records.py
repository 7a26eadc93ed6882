"""Typed records: what reproduce, forecast and the report's sections write is what report and docs read back."""

import pytest

from proxyscale.core import records


def test_an_experiment_record_round_trips_and_a_damaged_one_is_named(tmp_path):
    rec = records.ExperimentRecord(name="fig1", title="Fig 1", scale="micro", command="proxyscale reproduce fig1",
                                   seconds=12.5, figures=["figures/a.png"],
                                   verdicts=[records.Verdict("qk-LN lowers it", "reproduced", "0.2 vs 0.4"),
                                             records.Verdict("grows with N", "not reproduced", "")],
                                   sensitivity=[{"label.size": "d32-L1", "lr_sensitivity": 0.3}], groups=6)
    rec.write(tmp_path / "verdicts.json")
    back = records.ExperimentRecord.read(tmp_path / "verdicts.json")
    assert back == rec and back.reproduced == 1 and "wall_seconds" not in rec.to_json()  # unset fields not written
    for bad in ([1, 2], {"name": "x"}, {**rec.to_json(), "verdicts": [{"claim": "c", "oops": 1}]}):
        with pytest.raises(ValueError):
            records.ExperimentRecord.from_json(bad)


def test_forecast_verdicts_are_keyed_by_cause():
    verdicts = [{"cause": c, "verdict": "unlikely"} for c in reversed(records.FORECAST_CAUSES)]
    by = records.verdicts_by_cause(verdicts)
    assert by[records.ATTENTION_LOGIT_GROWTH]["cause"] == records.ATTENTION_LOGIT_GROWTH  # not by position
    with pytest.raises(ValueError, match="causes"):
        records.verdicts_by_cause(verdicts[:3])


def test_a_group_summary_round_trips_and_reads_summaries_written_before_device_was_recorded(make_raw, tmp_path):
    from proxyscale.core import config
    from proxyscale.engine.train import train_group

    summary, _ = train_group(config.from_dict(make_raw(train={"steps": 4, "eval_every": 2})), tmp_path / "g")
    assert isinstance(summary, records.GroupSummary) and summary.steps == 4 and summary.device == "cpu"
    assert records.GroupSummary.read(tmp_path / "g" / "summary.json") == summary
    legacy = {k: v for k, v in summary.to_json().items() if k not in ("device", "threads")}
    assert records.GroupSummary.from_json(legacy).device is None
    with pytest.raises(ValueError, match="steps"):
        records.GroupSummary.from_json({k: v for k, v in legacy.items() if k != "steps"})


def test_a_forecast_record_drops_fits_and_reads_back(tmp_path):
    rec = records.ForecastRecord(n_target=1e9, lr=0.01, verdicts=[{"cause": c, "verdict": "unlikely"}
                                                                   for c in records.FORECAST_CAUSES],
                                 trends={"attn_logit_max/0": {"ok": True, "value": 5.0, "high": float("inf"),
                                                              "fit": {"coef": [1.0]}}})
    rec.write(tmp_path / "forecast.json")
    back = records.ForecastRecord.read(tmp_path)
    assert back.trends["attn_logit_max/0"] == {"ok": True, "value": 5.0, "high": None}  # no fit; inf as null
    assert back.verdict(records.UPDATE_COLLAPSE)["verdict"] == "unlikely" and back.backtest is None
    with pytest.raises(ValueError, match="verdicts"):
        records.ForecastRecord.from_json({"n_target": 1.0, "lr": 0.1, "trends": {}})
