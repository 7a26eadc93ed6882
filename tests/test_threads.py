"""The thread policy on a busy machine (issue 14 §5): how many threads a group takes, from the cores free."""

import os
import subprocess
import sys
import time

import pytest

from proxyscale.engine import threads


def test_choose_never_takes_more_than_the_free_cores_nor_its_share():
    assert threads.choose(2, 2.0) == 2  # a quiet 2-core machine: both
    assert threads.choose(2, 1.0) == 1  # one core held by another process: one thread
    assert threads.choose(2, 0.7) == 1  # a core two-thirds free still counts
    assert threads.choose(2, 0.0) == 1  # never zero
    assert threads.choose(1, 2.0) == 1  # a sweep worker's share is its cap
    assert threads.choose(8, 5.6) == 5
    assert threads.choose(4, None) == 4  # unmeasurable (no /proc/stat): the share


def fake_stat(monkeypatch, samples):
    """/proc/stat readings (busy, total) and this process's CPU time, one pair per call."""
    it = iter(samples)
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(it)[0])
    clock = iter([s[1] for s in samples])
    monkeypatch.setattr(threads.time, "process_time", lambda: next(clock))


def test_core_meter_takes_this_process_out_of_the_machines_busy_time(monkeypatch):
    n = os.cpu_count() or 1
    wall = iter([0.0, 1.0])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(wall))
    # over 1 s of wall time the machine was busy for 60% of n·100 jiffies; this process used 0.5 core of it
    fake_stat(monkeypatch, [((0.0, 0.0), 0.0), ((0.6 * n * 100, n * 100.0), 0.5)])
    others = threads.CoreMeter().others()
    assert others == pytest.approx(0.6 * n - 0.5)


def test_rebalancer_drops_to_one_thread_when_another_process_takes_a_core_and_recovers(monkeypatch):
    n = os.cpu_count() or 1
    others = iter([n - 1.0, 0.0])  # first another process holds all cores but one, then the machine is quiet
    set_to = []
    r = threads.Rebalancer(cap=n, set_threads=set_to.append, every=0.0)
    monkeypatch.setattr(r.meter, "others", lambda: next(others))
    assert r.tick() == (1 if n > 1 else None)
    assert r.tick() == (n if n > 1 else None)
    assert set_to == ([1, n] if n > 1 else [])


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_free_cores_sees_a_cpu_bound_process():
    """A real busy process takes about one core from what free_cores reports. On a machine whose cores are already
    busy (under one core free) there is no core for the new process to take, so the check cannot be made there: it
    says so loudly instead of failing on the machine's load."""
    quiet = threads.free_cores(0.3)
    if quiet is not None and quiet < 1.0:
        pytest.skip(f"LOUD SKIP: the machine is busy ({quiet:.2f} cores free before the test's own load): run on a "
                    "quiet machine to check that free_cores sees a new CPU-bound process")
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.5)
        loaded = threads.free_cores(0.5)
    finally:
        busy.kill()
        busy.wait()
    assert quiet is not None and loaded is not None
    assert loaded <= quiet - 0.6, (quiet, loaded)


def test_the_wait_policy_follows_the_load_quiet_spins_busy_sleeps():
    """Issue 25: OpenMP's default wait on a quiet machine, PASSIVE on a busy one or one whose load is unknown."""
    quiet = {"GOMP_SPINCOUNT": "10000"}  # a bounded spin, then sleep
    assert threads.wait_policy(2.0, 2) == quiet and threads.wait_policy(1.6, 2) == quiet  # quiet (a little noise)
    assert threads.wait_policy(1.0, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}  # one core busy with other work
    assert threads.wait_policy(0.0, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.wait_policy(None, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}  # unmeasurable: the safe side


def test_the_cli_sets_the_wait_policy_before_torch_starts():
    # the child's environment without either setting (a main() earlier in this process may have set one)
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, sys\nos.environ.pop('OMP_WAIT_POLICY', None)\nimport proxyscale.cli\n"
            "before = os.environ.get('OMP_WAIT_POLICY')\n"
            "proxyscale.cli.main(['list'])\n"  # a command that trains nothing: the load is not measured
            "print(before, os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=clean).stdout.split()
    assert out[-3:] == ["None", "PASSIVE", "False"]  # set by main, not at import; torch not yet loaded
    keep = code.replace("os.environ.pop('OMP_WAIT_POLICY', None)\n", "")
    env = {**clean, "OMP_WAIT_POLICY": "ACTIVE"}  # the user's choice is kept
    out = subprocess.run([sys.executable, "-c", keep], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split()[-3:-1] == ["ACTIVE", "ACTIVE"]
    env = {**clean, "OMP_WAIT_POLICY": ""}  # empty: OpenMP's own default, the variable removed
    out = subprocess.run([sys.executable, "-c", keep], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split()[-2] == "None"


def test_set_wait_policy_applies_the_choice_for_the_measured_load(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.set_wait_policy(2.0) == {"GOMP_SPINCOUNT": "10000"}  # quiet
    assert "OMP_WAIT_POLICY" not in os.environ and os.environ["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    assert threads.set_wait_policy(0.9) == {"OMP_WAIT_POLICY": "PASSIVE"}  # busy
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert threads.set_wait_policy(2.0) == {}  # once set (by the user or before), it is kept
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_auto_threads_group_records_the_threads_it_took(tmp_path, make_raw):
    from proxyscale.core import config
    from proxyscale.engine.train import train_group

    raw = make_raw(train={"threads": 0, "steps": 4, "eval_every": 2})
    summary, _ = train_group(config.from_dict(raw), tmp_path / "g", thread_cap=1)
    assert summary.threads == 1 and summary.device == "cpu"


def test_a_sweep_worker_starts_at_its_share_and_may_grow_into_freed_cores(make_raw):
    from pathlib import Path

    from proxyscale.core import config
    from proxyscale.engine.train import GroupRun

    run = GroupRun(config.from_dict(make_raw(train={"threads": 0})), Path("/nonexistent"), thread_cap=1, thread_max=2)
    assert run.rebalancer is not None and run.rebalancer.threads == 1 and run.rebalancer.cap == 2
    fixed = GroupRun(config.from_dict(make_raw(train={"threads": 1})), Path("/nonexistent"), thread_cap=1, thread_max=2)
    assert fixed.rebalancer is None  # an explicit train.threads is kept as given
