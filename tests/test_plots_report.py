"""Every registered figure kind drawn once from one tiny real sweep, and the report built from typed records."""

import polars as pl
import pytest

from proxyscale.outputs import plots, report
from proxyscale.core import records
from proxyscale.runs import sweep

ARGS = {  # kind: arguments beyond results/path/pool, as an experiment file would give them
    "lr_vs_loss": {"panels": "model.qk_layernorm"},
    "sensitivity_vs_n": {"lines": "model.qk_layernorm"},
    "drift_law": {"lines": "model.qk_layernorm"},
    "loss_curves": {},
    "over_steps": {"lr": 1e-2, "lines": "model.qk_layernorm", "columns": ["loss", "attn_logit_max/0"],
                   "logy": [False, True]},
    "metric_vs": {"x": "member.lr", "y": ["final_eval_loss", "attn_logit_max/0"], "logy": [False, True]},
    "prediction": {},
    "sensitivity_by_variant": {},
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("figs")
    base = {"model": {"vocab": "byte"}, "data": {"corpus": "synthetic", "seq_len": 16, "batch_size": 2,
                                                 "eval_batches": 1},
            "train": {"steps": 10, "eval_every": 5, "threads": 1, "precision": "fp32"}, "optim": {"warmup": 2}}
    spec = {"name": "figs", "base": base, "at_step": 6,
            "sizes": [{"width": 16, "depth": 1, "heads": 1}, {"width": 32, "depth": 1, "heads": 1},
                      {"width": 32, "depth": 2, "heads": 2}],
            "axes": {"model.qk_layernorm": ["head", "off"]}, "members": {"lr": [1e-3, 1e-2, 1e-1]}}
    return sweep.run_sweep(spec, tmp / "out"), tmp / "out"


def test_every_figure_kind_is_drawn(ran):
    results, out = ran
    assert set(ARGS) == set(plots.FIGURES)
    for kind, args in ARGS.items():
        paths = plots.FIGURES[kind](results, out / "figures" / kind, title=kind, pool=out / "groups", **args)
        assert paths and all(p.exists() and p.stat().st_size > 1000 for p in paths), kind


def test_the_beyond_summary_draws_a_panel_per_family(ran, tmp_path):
    results, _ = ran
    paths = plots.beyond_summary({"qkclip": results, "norms": results, "empty": results.clear()}, tmp_path / "s")
    assert paths and all(p.exists() and p.stat().st_size > 1000 for p in paths)


def test_the_report_is_built_from_records(tmp_path):
    exp = tmp_path / "fig1"
    exp.mkdir()
    records.ExperimentRecord(name="fig1", title="Fig 1: qk-layernorm", scale="micro", seconds=60.0,
                             command="proxyscale reproduce fig1", figures=["figures/missing.png"],
                             verdicts=[records.Verdict("sensitivity grows", "reproduced", "0.3 → 0.5")],
                             sensitivity=[{"label.size": "d32-L1", "lr_sensitivity": 0.3}]).write(exp / "verdicts.json")
    page = report.build(tmp_path).read_text()
    assert "Fig 1: qk-layernorm" in page and "sensitivity grows" in page and "0.3 → 0.5" in page
    assert "1/1" in page and "figures/missing.png is missing" in page
    (tmp_path / "fig2").mkdir()
    (tmp_path / "fig2" / "verdicts.json").write_text('{"name": "fig2"}')  # missing fields: damaged, set aside
    assert "damaged and set aside" in report.build(tmp_path).read_text()
    assert any(p.name.startswith("verdicts.json.damaged-") for p in (tmp_path / "fig2").iterdir())
    assert pl.DataFrame(records.ExperimentRecord.read(exp / "verdicts.json").sensitivity).height == 1


def test_reproduce_beyond_summarises_the_families_it_finds(ran, tmp_path):
    from proxyscale.jobs import reproduce

    results, _ = ran
    assert reproduce.summarise_beyond(tmp_path, "micro") is None  # nothing reproduced: nothing written
    assert not (tmp_path / "beyond").exists()
    (tmp_path / "qkclip").mkdir()
    results.write_parquet(tmp_path / "qkclip" / "results.parquet")
    records.ExperimentRecord(name="qkclip", title="QK-clip", scale="micro", seconds=1.0, command="c", figures=[],
                             verdicts=[records.Verdict("clip helps", "reproduced", "0.2 vs 0.3")]
                             ).write(tmp_path / "qkclip" / "verdicts.json")
    rec = reproduce.summarise_beyond(tmp_path, "micro")
    assert rec.verdicts[0].claim == "qkclip" and rec.verdicts[0].verdict == "1/1 claims"
    assert (tmp_path / "beyond" / rec.figures[0]).exists()
    assert "Beyond the paper" in report.build(tmp_path).read_text()


def test_report_accepts_what_train_writes(tmp_path, capsys, make_raw):
    """Issue 21 §3: ``proxyscale report DIR`` on a ``proxyscale train`` folder: its members' curves, their final
    losses and the group's LR sensitivity; an unfinished group says how to finish it (one line, exit 2)."""
    import yaml

    from proxyscale.cli import main

    raw = make_raw(train={"steps": 6, "eval_every": 3}, members={"lr": [1e-3, 1e-2, 1e-1]})
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / "report.html").read_text()
    summary = records.GroupSummary.read(tmp_path / "run" / "summary.json")
    assert "group run: 3 members" in page and "<th>lr</th>" in page and "data:image/png;base64," in page
    assert f"{summary.lr_sensitivity[0]['lr_sensitivity']:.4f}" in page
    for m in summary.members:  # each member's final eval loss in the table
        assert f"{m['final_eval_loss']:.4g}" in page
    assert (tmp_path / "run" / "figures" / "group.png").exists()
    from proxyscale.core import store
    assert store.damage(tmp_path / "run") is None  # the report's files leave the finished group whole
    capsys.readouterr()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert main(["report", str(tmp_path / "half")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has not finished" in err and "proxyscale train" in err, err
