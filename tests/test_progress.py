"""Output a user can follow (issue 14 §7): plain progress lines where stdout is not a terminal, and SIGTERM
handled like Ctrl-C (checkpoint kept, one line on how to resume), tried as subprocesses, as nohup or Slurm run them."""

import json
import os
import signal
import subprocess
import sys
import time

import yaml

from proxyscale import progress


def proxyscale(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "proxyscale", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_sweep_prints_a_line_per_group_started_and_finished_when_not_a_terminal(tmp_path, make_raw):
    base = make_raw(train={"steps": 6, "eval_every": 3})
    spec = {"base": {k: v for k, v in base.items() if k != "members"},
            "sizes": [{"width": 32, "depth": 1, "heads": 1}, {"width": 32, "depth": 2, "heads": 1}],
            "axes": {"model.qk_layernorm": ["head", "off"]}, "members": {"lr": [0.01, 0.1]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    proc = proxyscale("sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    started = [line for line in out.splitlines() if " started: " in line]
    finished = [line for line in out.splitlines() if " finished in " in line]
    assert len(started) == 4 and len(finished) == 4, out
    assert "qk_layernorm=off, 2 members, 6 steps" in out
    assert "(1/4 groups done, ETA " in out and "(4/4 groups done)" in out
    assert all(line.startswith("[") for line in started + finished)


def test_lines_print_a_train_line_at_most_every_interval_and_at_the_end(capsys):
    lines = progress.Lines(every_seconds=3600)
    task = lines.add_task("train", total=10, completed=0, tps=0.0, logit=0.0)
    for s in range(1, 11):
        lines.update(task, completed=s, tps=1000.0, logit=2.5)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "step 1/10" in out[0] and "step 10/10 (100%)" in out[1], out


def test_sigterm_keeps_the_checkpoint_says_how_to_resume_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, make_raw):
    raw = make_raw(model={"depth": 1}, data={"seq_len": 16, "batch_size": 2},
                   train={"steps": 300, "eval_every": 150, "checkpoint_every": 50}, members={"lr": [0.01, 0.1]})
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    proc = proxyscale("train", str(tmp_path / "g.yaml"), "--out", str(out))
    deadline = time.monotonic() + 120
    while not (out / "checkpoint" / "state.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (out / "checkpoint" / "state.pt").exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted (SIGTERM); rerun the same command to resume" in lines[0], err
    assert (out / "checkpoint" / "state.pt").exists() and not (out / "DONE").exists()
    progress_json = json.loads((out / "checkpoint" / "progress.json").read_text())
    assert 0 < progress_json["next_step"] < 300
    resumed = proxyscale("train", str(tmp_path / "g.yaml"), "--out", str(out))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    whole = proxyscale("train", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "whole"))
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    a = json.loads((out / "summary.json").read_text())["members"]
    b = json.loads((tmp_path / "whole" / "summary.json").read_text())["members"]
    assert [m["final_eval_loss"] for m in a] == [m["final_eval_loss"] for m in b]


def test_sigterm_to_a_sweep_is_one_line_and_the_rerun_finishes(tmp_path, make_raw):
    base = make_raw(train={"steps": 3000, "eval_every": 1000, "checkpoint_every": 10})
    spec = {"base": {k: v for k, v in base.items() if k != "members"}, "members": {"lr": [0.01, 0.1]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ}
    proc = proxyscale("sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "o").glob("groups/*/checkpoint/state.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "finished groups are kept and unfinished ones resume" in lines[0], err


def test_the_eta_counts_what_running_groups_have_done_and_the_queue_by_workers(capsys, monkeypatch):
    from types import SimpleNamespace

    from proxyscale import config

    cfg = config.from_dict({"train": {"steps": 10}})
    groups = [SimpleNamespace(id=f"g{i}", cfg=cfg, labels={"size": f"s{i}"}) for i in range(4)]
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    lines = progress.Lines()
    lines.add_task("groups", total=4)
    lines.set_weights({g.id: 1.0 for g in groups}, parallel=2)
    lines.group_started(groups[0])
    lines.group_started(groups[1])
    now[0] = 10.0
    lines.group_finished(groups[0], 10.0)  # at t=10: g1 has run 10 s of its expected 10; g2, g3 queued
    out = capsys.readouterr().out
    assert "(1/4 groups done, ETA 10 s)" in out, out  # g1 ~0 s left, then g2 and g3 side by side: 10 s
