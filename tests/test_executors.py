"""Sweeps on Ray and on Slurm (submitit's local executor) give the local executor's results, bit for bit (one
thread per group); a worker killed mid-group is survived (Ray retries it) or resumed by rerunning the command."""

import os
import re
import signal
import threading
import time

import pytest

from proxyscale.runs import sweep
from proxyscale.core.store import StoreError

ray = pytest.importorskip("ray", reason="LOUD SKIP: ray not installed (pip install 'proxyscale[ray]')")
submitit = pytest.importorskip("submitit", reason="LOUD SKIP: submitit not installed (pip install 'proxyscale[slurm]')")


def spec(make_raw, steps=8):
    base = make_raw(train={"steps": steps, "eval_every": steps // 2, "checkpoint_every": 4})
    base.pop("members")
    return {"name": "t", "base": base, "axes": {"model.qk_layernorm": ["head", "off"]},
            "members": {"lr": [1e-3, 1e-2]}}


def same(a, b):
    cols = [c for c in a.columns if c != "tokens_per_s"]
    return a.select(cols).sort("group", "member").equals(b.select(cols).sort("group", "member"))


class KillOnce(threading.Thread):
    """Watch a pool; the first group that has checkpointed gets its training process killed (SIGKILL)."""

    def __init__(self, pool):
        super().__init__(daemon=True)
        self.pool, self.killed, self.stop = pool, None, False

    def run(self):
        while not self.stop and self.killed is None:
            for lock in self.pool.glob("*/.lock"):
                if (lock.parent / "checkpoint" / "progress.json").exists() and not (lock.parent / "DONE").exists():
                    m = re.match(r"pid (\d+)", lock.read_text())
                    if m:
                        try:
                            os.kill(int(m.group(1)), signal.SIGKILL)
                            self.killed = lock.parent.name
                        except ProcessLookupError:
                            continue
                        return
            time.sleep(0.05)


def test_ray_two_workers_equal_local_and_survive_a_killed_worker(tmp_path, make_raw):
    s = spec(make_raw, steps=80)
    local = sweep.run_sweep(s, tmp_path / "local")
    killer = KillOnce(tmp_path / "ray" / "groups")
    killer.start()
    on_ray = sweep.run_sweep(s, tmp_path / "ray", executor={"kind": "ray", "cpus_per_group": 1})
    killer.stop = True
    assert killer.killed is not None, "no worker was killed: the test did not test anything"
    assert same(local, on_ray)  # the retry resumed the killed group from its checkpoint, bit for bit


def test_submitit_local_equals_local_and_a_killed_job_resumes_on_rerun(tmp_path, make_raw):
    s = spec(make_raw, steps=80)
    local = sweep.run_sweep(s, tmp_path / "local")
    ex = {"kind": "slurm", "slurm_cluster": "local", "cpus_per_group": 1}
    killer = KillOnce(tmp_path / "slurm" / "groups")
    killer.start()
    with pytest.raises(StoreError, match="failed .* rerun the same command"):
        sweep.run_sweep(s, tmp_path / "slurm", executor=ex)
    killer.stop = True
    assert killer.killed is not None
    rerun = sweep.run_sweep(s, tmp_path / "slurm", executor=ex)
    assert same(local, rerun)
    plain = sweep.run_sweep(spec(make_raw), tmp_path / "plain", executor=ex)  # and without a kill
    assert same(sweep.run_sweep(spec(make_raw), tmp_path / "plain_local"), plain)
