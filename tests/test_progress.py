"""Output a user can follow (issue 14 §7): plain progress lines where stdout is not a terminal, and SIGTERM
handled like Ctrl-C (checkpoint kept, one line on how to resume), tried as subprocesses, as nohup or Slurm run them."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import yaml

from proxyscale.runs import progress


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

    from proxyscale.core import config

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


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_group_trained_here_prints_a_heartbeat_with_step_loss_throughput_and_eta_every_minute(capsys):
    """Issue 21 §2: a long group is never silent in a log. ``tick`` (what the heartbeat thread calls every few
    seconds) prints the step line once 60 s (fake) passed without a line, whether or not a step was logged since."""
    clock = FakeClock()
    lines = progress.Lines(clock=clock)
    task = lines.add_task("train", total=1000, completed=0, tps=0.0, logit=0.0, loss=None, members=3)
    lines.update(task, completed=10, tps=2000.0, logit=4.0, loss=3.25)  # the first logged step prints
    clock.now += 30
    lines.update(task, completed=100, tps=2000.0, logit=4.0, loss=3.0)
    lines.tick()
    assert len(capsys.readouterr().out.splitlines()) == 1  # 30 s: nothing more
    clock.now += 31  # a minute since the last line, no step logged since 30 s: the heartbeat speaks
    lines.tick()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1, out
    assert "step 100/1,000 (10%)" in out[0] and "loss 3 (best of 3 members)" in out[0] and "2,000 tok/s" in out[0]
    assert "ETA 9.2 min" in out[0], out  # 100 steps in 61 s from step 0: 900 left at 100/61 s a step = 549 s
    clock.now += 59
    lines.tick()
    assert capsys.readouterr().out == ""
    clock.now += 1
    lines.tick()
    assert "step 100/1,000" in capsys.readouterr().out


def test_a_sweep_prints_each_running_group_from_its_heartbeat_file_every_minute(tmp_path, capsys):
    """Issue 21 §2, measured: `reproduce fig1 --scale laptop --workers 2` printed nothing for 13 minutes while the
    d96 groups trained in worker processes. Each worker's group writes heartbeat.json (``progress.Heartbeat``); the
    sweep's lines read it: step, loss, tokens/s per running group and the ETA of the whole command."""
    from types import SimpleNamespace

    from proxyscale.core import config

    cfg = config.from_dict({"train": {"steps": 1500}, "members": {"lr": [1e-3 * 2**i for i in range(7)]}})
    groups = [SimpleNamespace(id=f"group{i}", cfg=cfg, labels={"size": f"d{32 * (i + 1)}"}) for i in range(3)]
    clock = FakeClock()
    lines = progress.Lines(clock=clock)
    lines.add_task("groups", total=3)
    lines.set_weights({g.id: 1.0 for g in groups}, parallel=2, pool=tmp_path)
    for g in groups[:2]:
        lines.group_started(g)
    capsys.readouterr()
    # the workers' callbacks, driven by the same fake clock (as if in another process)
    beats = [progress.Heartbeat(tmp_path / g.id, every_seconds=10, clock=clock) for g in groups[:2]]
    for g, beat in zip(groups[:2], beats):
        (tmp_path / g.id).mkdir()
        beat.on_start(SimpleNamespace(next_step=0, cfg=cfg, members=[0] * 7))
    clock.now += 59
    lines.tick()
    assert capsys.readouterr().out == ""  # under a minute since the last line
    clock.now += 1  # 60 s in: group0 is 300 steps in (a fifth), group1 150 steps
    beats[0].on_logged(299, {"loss": np.array([3.5, np.nan, 2.75] + [4.0] * 4), "tokens_per_s": np.full(7, 1500.0)})
    beats[1].on_logged(149, {"loss": np.full(7, 4.5), "tokens_per_s": np.full(7, 750.0)})
    lines.tick()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1, out
    assert "group group0 (d32, 7 members, 1,500 steps): step 300/1,500, loss 2.75 (best of 7 members), 1,500 tok/s" \
        in out[0], out
    assert "group group1 (d64, 7 members, 1,500 steps): step 150/1,500, loss 4.5" in out[0], out
    # group0 needs 240 s more, group1 540 s; group2 is queued (the mean per group: (300 + 600) / 2 = 450 s) and
    # starts when group0 finishes: max(540, (240 + 540 + 450) / 2) = 615 s
    assert "(0/3 groups done, ETA 10.2 min)" in out[0], out


def test_a_heartbeat_file_is_written_at_start_and_then_at_most_every_interval(tmp_path):
    from types import SimpleNamespace

    clock = FakeClock()
    beat = progress.Heartbeat(tmp_path, every_seconds=10, clock=clock)
    beat.on_start(SimpleNamespace(next_step=40, cfg=SimpleNamespace(train=SimpleNamespace(steps=100)), members=[0]))
    assert progress.read_heartbeat(tmp_path) == {"step": 40, "first_step": 40, "steps": 100, "members": 1,
                                                 "loss": None, "tokens_per_s": None, "seconds": 0.0}
    clock.now += 5
    beat.on_logged(49, {"loss": np.array([2.0]), "tokens_per_s": np.array([10.0])})
    assert progress.read_heartbeat(tmp_path)["step"] == 40  # 5 s: not yet
    beat.on_logged(49, {"eval_loss": np.array([2.0])})  # an evaluation row is not a step
    clock.now += 5
    beat.on_logged(59, {"loss": np.array([np.nan]), "tokens_per_s": np.array([10.0])})
    assert progress.read_heartbeat(tmp_path) == {"step": 60, "first_step": 40, "steps": 100, "members": 1,
                                                 "loss": None, "tokens_per_s": 10.0, "seconds": 10.0}


def test_the_heartbeat_thread_runs_while_the_lines_are_entered_and_stops_after(capsys):
    lines = progress.Lines(every_seconds=0.05)
    task = lines.add_task("train", total=100, completed=0, tps=0.0, logit=0.0)
    seen = ""
    with lines:
        lines.update(task, completed=1, tps=1.0, logit=1.0, loss=2.0)  # prints once; the thread repeats it
        deadline = time.monotonic() + 30
        while seen.count("step 1/100") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            seen += capsys.readouterr().out
        assert lines._ticker is not None and lines._ticker.is_alive()
    assert seen.count("step 1/100") >= 3, seen
    assert lines._ticker is None
