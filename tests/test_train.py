import math

import polars as pl
import pytest

from proxyscale.engine.callbacks import StepEnd
from proxyscale.core import config
from proxyscale.engine.train import train_group


def run(tmp_path, raw, name="run", **kw):
    cfg = config.from_dict(raw)
    summary, _ = train_group(cfg, tmp_path / name, **kw)
    return summary, pl.read_parquet(tmp_path / name / "metrics.parquet")


def member_frame(df: pl.DataFrame, k: int) -> pl.DataFrame:
    return df.filter(pl.col("member") == k).drop("member", "tokens_per_s").sort("step")


def test_member_equivalence_k3_vs_k1(tmp_path, make_raw):
    lrs = [1e-3, 1e-2, 1e-1]
    _, group = run(tmp_path, make_raw(members={"lr": lrs, "seed": [4]}), "group")
    for k, lr in enumerate(lrs):
        _, alone = run(tmp_path, make_raw(members={"lr": [lr], "seed": [4]}), f"alone{k}")
        a, b = member_frame(group, k), member_frame(alone, 0)
        assert a.columns == b.columns and a.height == b.height
        for col in a.columns:
            x, y = a[col].to_numpy(), b[col].to_numpy()
            both_null = a[col].is_null().to_numpy() & b[col].is_null().to_numpy()
            assert ((abs(x - y) <= 1e-4 * (1 + abs(y))) | both_null).all(), (lr, col)


def test_member_isolation_nan_member_leaves_others_bit_identical(tmp_path, make_raw):
    with_nan = make_raw(members={"lr": [1e-2, 3e-2, 1e30]})  # the last member blows up to NaN/Inf at once
    without = make_raw(members={"lr": [1e-2, 3e-2]})
    s1, a = run(tmp_path, with_nan, "with")
    s2, b = run(tmp_path, without, "without")
    assert s1.members[2]["diverged"] and not s1.members[0]["diverged"]
    for k in (0, 1):
        fa, fb = member_frame(a, k), member_frame(b, k)
        for col in fb.columns:
            assert fa[col].to_list() == fb[col].to_list(), col  # bit-identical
        assert s1.members[k]["final_eval_loss"] == s2.members[k]["final_eval_loss"]


def test_resume_after_interruption_matches_uninterrupted(tmp_path, make_raw):
    raw = make_raw(train={"steps": 30, "checkpoint_every": 10}, members={"lr": [1e-2, 1e-1]})
    s_full, full = run(tmp_path, raw, "full")

    def interrupt(step):
        if step == 24:
            raise KeyboardInterrupt

    cfg = config.from_dict(raw)
    with pytest.raises(KeyboardInterrupt):
        train_group(cfg, tmp_path / "resumed", callbacks=[StepEnd(interrupt)])
    assert (tmp_path / "resumed" / "checkpoint" / "state.pt").exists()
    assert not (tmp_path / "resumed" / "metrics.parquet").exists()
    s_res, trained = train_group(cfg, tmp_path / "resumed")
    assert trained
    res = pl.read_parquet(tmp_path / "resumed" / "metrics.parquet")
    assert full.drop("tokens_per_s").equals(res.drop("tokens_per_s"))
    assert [m["final_eval_loss"] for m in s_full.members] == [m["final_eval_loss"] for m in s_res.members]
    assert not (tmp_path / "resumed" / "checkpoint").exists()
    # a finished directory is left alone
    again, trained = train_group(cfg, tmp_path / "resumed")
    assert not trained and again == s_res


def test_metrics_columns_and_summary(tmp_path, make_raw):
    summary, df = run(tmp_path, make_raw(members={"lr": [1e-3, 1e-2, 1e-1]}))
    for col in ["step", "member", "loss", "z_loss", "eval_loss", "lr", "attn_logit_max/0", "attn_logit_max/1",
                "q_norm/0", "k_norm/0", "output_logit_mean", "log_z_mean", "grad_norm", "grad_rms/layers.0.w1",
                "update_rms/layers.0.w1", "param_rms/embed", "block_rms/0", "block_rms/1", "tokens_per_s", "diverged"]:
        assert col in df.columns, col
    assert df.height == (20 + 1) * 3  # steps 0..19 and the final evaluation row, per member
    ev = df.filter(pl.col("eval_loss").is_not_null())
    assert sorted(set(ev["step"].to_list())) == [0, 10, 20]
    l0 = ev.filter(pl.col("step") == 0)["eval_loss"].to_list()
    assert [m["l0"] for m in summary.members] == pytest.approx(l0)
    assert l0[0] == pytest.approx(math.log(256), abs=1.0)
    row = summary.lr_sensitivity[0]
    assert row["lrs"] == [1e-3, 1e-2, 1e-1] and row["lr_sensitivity"] > 0
    assert summary.n_params == 12 * 2 * 32 * 32 + 2 * (2 * 32 + 2 * 16) + 32


def test_divergence_window_freezes_member(tmp_path, make_raw):
    raw = make_raw(train={"steps": 20, "divergence_margin": -100.0, "divergence_window": 3}, members={"lr": [1e-2]})
    summary, df = run(tmp_path, raw)
    assert summary.members[0]["diverged"] and summary.members[0]["diverged_step"] == 2
    m = df.filter(pl.col("step").is_between(5, 19))
    assert m["param_rms/embed"].n_unique() == 1  # frozen: no more updates


def test_behaviour_qk_layernorm_tames_attention_logits(tmp_path, make_raw):
    """Micro scale, LR 0.1: without qk-layernorm the layer-0 max attention logit grows >= 10x higher."""
    peak = {}
    for qk in ("off", "head"):
        raw = make_raw(model={"qk_layernorm": qk}, data={"seq_len": 64, "batch_size": 8},
                       train={"steps": 60, "eval_every": 60}, optim={"warmup": 10}, members={"lr": [0.1]})
        _, df = run(tmp_path, raw, qk)
        peak[qk] = df["attn_logit_max/0"].drop_nulls().tail(10).mean()
    assert peak["off"] >= 10 * peak["head"], peak
