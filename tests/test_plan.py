"""The plan before a run: counts, tokens and FLOPs of a tiny spec, what the pool holds, the probe's estimate."""

from pathlib import Path

import pytest
import yaml

from proxyscale.engine.callbacks import StepEnd
from proxyscale.engine import device
from proxyscale.runs import plan, sweep
from proxyscale.core import table
from proxyscale.cli import main
from proxyscale.engine.train import train_group


def tiny_spec(make_raw):
    base = make_raw(train={"steps": 6, "eval_every": 3, "checkpoint_every": 2})
    base.pop("members")
    return {"name": "t", "base": base,
            "sizes": [{"width": 32, "depth": 1, "heads": 1}, {"width": 64, "depth": 1, "heads": 2}],
            "axes": {"model.qk_layernorm": ["head", "off"]}, "members": {"lr": [1e-3, 1e-2]}}


def test_counts_tokens_flops_and_pool_state(tmp_path, make_raw):
    groups = sweep.expand(tiny_spec(make_raw))
    pool = tmp_path / "groups"
    train_group(groups[0].cfg, pool / groups[0].id)  # finished

    def stop(step):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # checkpointed at step 2, then interrupted
        train_group(groups[1].cfg, pool / groups[1].id, callbacks=[StepEnd(stop)])
    p = plan.make(groups, pool)
    tokens = 2 * 6 * 4 * 32  # members x steps x batch x seq
    assert [g.tokens for g in p.groups] == [tokens] * 4
    per_token = {32: 6 * (12 * 32**2 + 32 * 256) + 6 * 32 * 32, 64: 6 * (12 * 64**2 + 64 * 256) + 6 * 64 * 32}
    assert [g.flops for g in p.groups] == [tokens * per_token[g.cfg.model.width] for g in groups]
    assert [g.status for g in p.groups] == ["done", "resumes at step 2", "new", "new"]
    assert [g.steps_left for g in p.groups] == [0, 4, 6, 6]
    s = plan.summary(p)
    assert (s["groups"], s["done"], s["resuming"], s["new"], s["runs"]) == (4, 1, 1, 2, 8)
    assert s["tokens"] == 4 * tokens and s["tokens_left"] == tokens * 16 // 6
    assert s["seconds"] is None  # not probed

    plan.estimate(p)
    assert p.groups[0].seconds is None and all(g.seconds > 0 for g in p.groups[1:])
    assert p.seconds == pytest.approx(sum(g.seconds for g in p.groups[1:]))
    assert p.groups[1].seconds < p.groups[2].seconds * 1.5  # 4 steps left against 6, same shape
    assert "CPU" in p.device


def test_a_group_that_does_not_fit_has_no_estimate(make_raw, tmp_path, monkeypatch):
    groups = sweep.expand(tiny_spec(make_raw))
    monkeypatch.setattr(device, "free_bytes", lambda dev: 1000)
    p = plan.make(groups[:1], tmp_path, probe=True)
    assert p.groups[0].seconds is None and "does not fit" in p.groups[0].note and p.seconds is None


def test_plan_commands_print_and_write_nothing(tmp_path, make_raw, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(make_raw)))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--plan"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "4 groups (0 done, 0 resuming, 4 new), 8 runs" in out and "estimated" in out
    assert not (tmp_path / "o").exists()
    assert main(["reproduce", "fig2", "--out", str(tmp_path / "r"), "--plan"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "4 groups (0 done, 0 resuming, 4 new), 8 runs" in out and not (tmp_path / "r").exists()
    target = Path(__file__).parents[1] / "examples" / "target.yaml"
    assert main(["forecast", str(target), "--out", str(tmp_path / "f"), "--plan"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the micro ladder: 4 sizes × 8 LRs around the target's 1e-2
    assert "4 groups (0 done, 0 resuming, 4 new), 32 runs" in out and not (tmp_path / "f").exists()


def test_every_run_prints_its_totals_first(tmp_path, make_raw, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(make_raw)))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal's width
    assert out.index("4 groups (0 done, 0 resuming, 4 new), 8 runs") < out.index("results.parquet")
    assert all(table.run_id(g.cfg) == g.id for g in sweep.expand(tiny_spec(make_raw)))


def test_what_a_plan_shows_is_what_will_run(tmp_path, capsys, monkeypatch):
    """Issue 21 §5: ``reproduce beyond --plan`` is titled with beyond (not all), and a forecast's plan names the
    switches its ladder trains with (examples/target_muonclip.yaml: Muon and QK-clip, qk-layernorm off)."""
    from proxyscale.runs import plan

    monkeypatch.setattr(plan, "probe_step_seconds", lambda cfg: 0.01)  # the titles, not the probe, are tested here
    assert main(["reproduce", "beyond", "--out", str(tmp_path / "r"), "--plan"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "plan: reproduce beyond --scale micro" in out and "reproduce all" not in out
    assert "beyond (shared groups once):" in out and not (tmp_path / "r").exists()
    muonclip = Path(__file__).parents[1] / "examples" / "target_muonclip.yaml"
    assert main(["forecast", str(muonclip), "--out", str(tmp_path / "f"), "--plan"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the ladder trains with qk_layernorm=off, optimizer=muon, qk_clip=100.0" in out, out
    target = Path(__file__).parents[1] / "examples" / "target.yaml"
    assert main(["forecast", str(target), "--out", str(tmp_path / "f"), "--plan"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the ladder trains with qk_layernorm=off" in out and "optimizer=" not in out, out
