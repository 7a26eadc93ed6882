"""The one callback protocol of a group's training: what each point sees, in order; the loggers, the progress and
the monitor's alarms plug in as callbacks with no loop code of their own."""

import json

from proxyscale.engine import callbacks
from proxyscale.core import config
from proxyscale import monitor
from proxyscale.engine.train import GroupRun, train_group


class Recorder(callbacks.Callback):
    def __init__(self):
        self.events = []

    def on_start(self, run):
        self.events.append(("start", run.next_step, run.l0 is not None))

    def on_logged(self, step, columns):
        self.events.append(("logged", step, sorted(columns)))

    def on_step_end(self, step):
        self.events.append(("end", step))

    def on_finish(self, summary):
        self.events.append(("finish", summary.steps))


def test_each_point_is_called_in_order(make_raw, tmp_path):
    cfg = config.from_dict(make_raw(train={"steps": 6, "eval_every": 3, "log_every": 2}))
    rec = Recorder()
    summary, trained = train_group(cfg, tmp_path / "g", callbacks=[rec])
    assert trained and rec.events[0] == ("start", 0, True)  # ℓ0 is known when the first callback runs
    assert rec.events[-1] == ("finish", 6) and summary.steps == 6
    assert [e[1] for e in rec.events if e[0] == "end"] == list(range(6))
    logged = [(e[1], e[2]) for e in rec.events if e[0] == "logged"]
    assert logged[0] == (0, ["eval_loss"]) and logged[-1] == (6, ["eval_loss"])  # ℓ0 at step 0, the final eval
    train_rows = [(s, cols) for s, cols in logged if "loss" in cols]
    assert [s for s, _ in train_rows] == [0, 2, 4, 5]  # every log_every-th step and the last
    assert all("tokens_per_s" in cols and "attn_logit_max/0" in cols for _, cols in train_rows)


def test_start_takes_a_stand_in_l0_instead_of_evaluating(make_raw, tmp_path):
    run = GroupRun(config.from_dict(make_raw()), tmp_path / "g")
    run.start(l0=7.5)
    assert run.l0.tolist() == [7.5] * len(run.members)
    run.start()  # already known: not evaluated again
    assert run.l0.tolist() == [7.5] * len(run.members)


def test_the_monitors_alarms_watch_a_group_as_a_callback(make_raw, tmp_path, capsys):
    cfg = config.from_dict(make_raw(model={"qk_layernorm": "off"}, members={"lr": [1e-3, 0.3]},
                                    train={"steps": 30, "eval_every": 30, "log_every": 1}))
    alarms = monitor.RunAlarms(logit_threshold=20.0, out=tmp_path / "alarms")
    (tmp_path / "alarms").mkdir()
    train_group(cfg, tmp_path / "g", callbacks=[alarms])
    spoken = [a for a in alarms.alarms if a.cause == "attention-logit growth"]
    assert spoken, alarms.members[1].firings
    fired = alarms.members[1].firings.get("attention-logit growth", 0)
    assert len([a for a in alarms.members[1].alarms if a.cause == "attention-logit growth"]) <= fired
    assert "member 1: step" in capsys.readouterr().err
    record = json.loads((tmp_path / "alarms" / "alarms.json").read_text())
    assert {r["member"] for r in record} >= {1} and record[0]["cause"]
