"""The results table's vocabulary: labels from the validated config, row selectors, the identity of a run."""

import json

import polars as pl
import pytest
import yaml

from proxyscale.science import claims
from proxyscale.core import config, table
from proxyscale.runs import sweep
from proxyscale.core.config import ConfigError


def rows(**cols):
    n = len(next(iter(cols.values())))
    base = {"label.size": ["s"] * n, "n_params": [1] * n, "l0": [5.0] * n, "diverged": [False] * n}
    return pl.DataFrame({**base, **cols})


def test_unquoted_off_in_an_axis_is_the_configs_off(make_raw):
    """YAML reads an unquoted `off` as False; the label must be what the config holds ("off"), and a claim
    written with an unquoted off must select those rows."""
    base = make_raw()
    base.pop("members")
    spec = yaml.safe_load(yaml.safe_dump({"base": base, "members": {"lr": [1e-3, 1e-2]}})
                          + "axes: {model.qk_layernorm: [head, off], train.compile: [off]}\n")
    assert spec["axes"]["model.qk_layernorm"] == ["head", False]  # the YAML quirk this guards against
    groups = sweep.expand(spec)
    assert [g.labels["model.qk_layernorm"] for g in groups] == ["head", "off"]
    assert [g.cfg.model.qk_layernorm for g in groups] == ["head", "off"]
    assert groups[0].labels["train.compile"] == "off"
    results = rows(**{"label.model.qk_layernorm": ["head", "off"], "member.lr": [1e-3, 1e-3],
                      "final_eval_loss": [2.0, 3.0]})
    assert results.filter(table.is_("model.qk_layernorm", False))["final_eval_loss"].to_list() == [3.0]
    claim = yaml.safe_load("text: t\ncheck: ratio_at_least\nargs: {column: final_eval_loss, axis: model.qk_layernorm, "
                           "high: off, low: head, factor: 1.2}")
    verdict = claims.evaluate([claim], results)[0]
    assert verdict.reproduced and "3 vs 2" in verdict.detail


def test_value_is_validated_like_the_config():
    assert table.value("model.qk_layernorm", True) == "head"
    assert table.value("member.warmup", 75) == 75
    assert table.value("member.lr", "1e-3") == 1e-3
    assert table.value("label.scaling", "depth") == "depth"  # not a config path: unchanged
    with pytest.raises(ConfigError, match="model.qk_layernorm: got 'of'; valid: off, head, width"):
        table.value("model.qk_layernorm", "of")


def test_selectors_share_one_tolerance():
    lrs = [3e-4, 1e-3, 1e-3 * (1 + 1e-12), 1e-3 * (1 + 1e-6), 1e-2]
    r = rows(**{"member.lr": lrs, "final_eval_loss": [1.0, 2.0, 3.0, 4.0, 5.0]})
    assert table.at_lr(r, 1e-3)["final_eval_loss"].to_list() == [2.0, 3.0]  # 1e-12 apart: same; 1e-6: not
    assert table.where(r, {"member.lr": 1e-3})["final_eval_loss"].to_list() == [2.0, 3.0]
    assert table.where(r, {"member.lr": {"min": 1e-3, "max": 2e-3}}).height == 3
    assert table.col("model.qk_layernorm") == "label.model.qk_layernorm"
    assert table.col("member.lr") == "member.lr" and table.col("attn_logit_max/0") == "attn_logit_max/0"
    assert table.col("final_eval_loss") == "final_eval_loss"
    sized = pl.DataFrame({"label.size": ["big", "small", "big"], "n_params": [9, 1, 9]})
    assert table.sizes(sized) == ["small", "big"]


def test_train_and_sweep_share_one_identity(make_raw, tmp_path):
    from proxyscale.engine.train import train_group

    cfg = config.from_dict(make_raw(train={"steps": 4, "eval_every": 2}))
    other_threads = config.from_dict(make_raw(train={"steps": 4, "eval_every": 2, "threads": 2}))
    assert table.run_id(cfg) == table.run_id(other_threads) and table.same_run(cfg, other_threads)
    longer = config.from_dict(make_raw(train={"steps": 6, "eval_every": 2}))
    assert table.run_id(cfg) != table.run_id(longer) and not table.same_run(cfg, longer)
    train_group(cfg, tmp_path / "g")
    stored = json.loads((tmp_path / "g" / "config.json").read_text())
    assert table.same_run(stored, other_threads)  # train accepts the finished run: nothing retrained
    assert train_group(other_threads, tmp_path / "g")[1] is False
    with pytest.raises(ConfigError, match="different config"):
        train_group(longer, tmp_path / "g")


def test_every_diagnostic_is_its_own_column_in_claims_and_figures():
    """A figure or claim naming a diagnostic by its bare name (``mu_norm``, ``log_z_mean``) reads that column, not a
    label of that name (found running the oec experiment: ``metric_vs`` looked for ``label.mu_norm``)."""
    from proxyscale.core import table

    assert all(table.col(d) == d for d in table.DIAGNOSTICS)
    assert table.col("model.qk_layernorm") == "label.model.qk_layernorm"
