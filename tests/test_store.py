"""The run store: each failure a reliability review found, reproduced first, then shown handled.

One writer per directory; results whole or absent; damaged checkpoints and finished groups named, set aside (never
deleted) and retrained; a full disk reported as such with nothing half-written left behind.
"""

import errno
import json
import subprocess
import sys
import time

import polars as pl
import pytest
import torch
import yaml

from proxyscale.engine.callbacks import StepEnd
from proxyscale.core import config, store
from proxyscale.runs import sweep
from proxyscale.cli import main
from proxyscale.core.store import StoreError
from proxyscale.engine.train import train_group


def cfg_of(make_raw, **train):
    return config.from_dict(make_raw(train={"steps": 12, "eval_every": 4, "checkpoint_every": 4, **train},
                                     members={"lr": [1e-3, 1e-2]}))


def interrupted(cfg, out, at):
    """Train ``cfg`` into ``out`` and stop it (as a kill would) after step ``at``."""
    def stop(step):
        if step == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(cfg, out, callbacks=[StepEnd(stop)])


def results(out):
    return json.loads((out / "summary.json").read_text())["members"], pl.read_parquet(out / "metrics.parquet")


def same_results(a, b):
    (ma, fa), (mb, fb) = results(a), results(b)
    cols = [c for c in fa.columns if c != "tokens_per_s"]
    return ma == mb and fa.select(cols).equals(fb.select(cols))


def leftovers(root):
    return [p for p in root.rglob("*") if ".tmp" in p.name]


# ---- one writer -------------------------------------------------------------------------------------------------

def test_second_writer_exits_2_naming_the_holder_and_the_first_result_stays_whole(tmp_path, make_raw):
    """Reported: two `train` commands with different configs into one --out mixed one's config with the other's
    results, or crashed on the other's temporary checkpoint file."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump(make_raw(train={"steps": 400, "eval_every": 100, "checkpoint_every": 50})))
    second.write_text(yaml.safe_dump(make_raw(train={"steps": 8, "eval_every": 4}, optim={"warmup": 2})))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "proxyscale", "train", "--quiet", "--out", str(out)]
    a = subprocess.Popen([*cmd, str(first)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((out / ".lock").exists() and (out / ".lock").read_text()) and time.time() < deadline:
        time.sleep(0.1)
    b = subprocess.run([*cmd, str(second)], capture_output=True, text=True, timeout=120)
    a_out, a_err = a.communicate(timeout=300)
    assert a.returncode == 0, a_err
    assert b.returncode == 2 and len(b.stderr.strip().splitlines()) == 1
    assert "being written by pid" in b.stderr and str(a.pid) in b.stderr
    done = json.loads((out / "DONE").read_text())
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 400
    assert json.loads((out / "summary.json").read_text())["steps"] == 400
    assert store.damage(out) is None and done["sha256"]["summary.json"] == store.sha256(out / "summary.json")
    assert main(["train", "--quiet", str(second), "--out", str(out)]) == 2  # finished, other config: refused


def test_a_lock_is_released_when_its_holder_dies(tmp_path):
    out = tmp_path / "run"
    code = f"import os, sys; sys.path[:0] = {sys.path!r}\nfrom proxyscale.core import store\nfrom pathlib import Path\n" \
           f"with store.lock(Path({str(out)!r})):\n    os._exit(9)\n"  # dies holding the lock, as kill -9 would
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    with store.lock(out):  # free again
        assert "pid" in (out / ".lock").read_text()


# ---- damaged checkpoints ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_checkpoint_is_set_aside_and_the_run_falls_back(tmp_path, make_raw, capsys, damage):
    """Reported: a truncated or garbage checkpoint/state.pt blocked the run for good with a torch traceback."""
    cfg = cfg_of(make_raw)
    train_group(cfg, tmp_path / "whole")
    out = tmp_path / "run"
    interrupted(cfg, out, at=9)  # checkpoints after steps 4 and 8: state.prev.pt (4), state.pt (8)
    state = out / "checkpoint" / "state.pt"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x80garbage" * 100)
    summary, trained = train_group(cfg, out)
    err = capsys.readouterr().err
    assert trained and "damaged checkpoint" in err and "set aside as state.pt.damaged-" in err
    assert same_results(out, tmp_path / "whole")  # resumed from step 4: bit-identical to the uninterrupted run
    left = [p.name for p in (out / "checkpoint").iterdir()]  # finished: checkpoints cleared, the damaged one kept
    assert len(left) == 1 and left[0].startswith("state.pt.damaged-")


def test_every_checkpoint_damaged_restarts_from_scratch_in_a_sweep(tmp_path, make_raw, capsys):
    """Reported: in a sweep one damaged checkpoint aborted the whole sweep and results.parquet was not written."""
    base = make_raw(train={"steps": 12, "eval_every": 4, "checkpoint_every": 4})
    base.pop("members")
    spec = {"base": base, "axes": {"model.qk_layernorm": ["head", "off"]}, "members": {"lr": [1e-3, 1e-2]}}
    whole = sweep.run_sweep(spec, tmp_path / "whole")
    groups = sweep.expand(spec)
    pool = tmp_path / "s" / "groups"
    interrupted(groups[0].cfg, pool / groups[0].id, at=9)
    for f in (pool / groups[0].id / "checkpoint").glob("state*.pt"):
        f.write_bytes(b"not a checkpoint")
    resumed = sweep.run_sweep(spec, tmp_path / "s")
    assert capsys.readouterr().err.count("damaged checkpoint") == 2
    cols = [c for c in whole.columns if c != "tokens_per_s"]
    assert whole.select(cols).sort("group", "member").equals(resumed.select(cols).sort("group", "member"))


# ---- damaged finished groups ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("victim", ["summary.json", "metrics.parquet", "DONE"])
def test_damaged_finished_group_is_named_set_aside_and_retrained(tmp_path, make_raw, capsys, victim):
    """Reported: a corrupt summary.json or metrics.parquet made sweep fail with a traceback naming neither the group
    nor the file."""
    base = make_raw(train={"steps": 6, "eval_every": 3})
    base.pop("members")
    spec = {"base": base, "members": {"lr": [1e-3, 1e-2]}}
    first = sweep.run_sweep(spec, tmp_path / "s")
    gid = first["group"][0]
    path = tmp_path / "s" / "groups" / gid / victim
    path.write_bytes(path.read_bytes()[:-7] + b"damaged")
    again = sweep.run_sweep(spec, tmp_path / "s")  # the damage is found before training: set aside, retrained
    err = capsys.readouterr().err
    assert f"damaged finished group {tmp_path / 's' / 'groups' / gid}" in err and f"set aside as {gid}.damaged-" in err
    assert [p.name.startswith(f"{gid}.damaged-") for p in (tmp_path / "s" / "groups").iterdir()].count(True) == 1
    cols = [c for c in first.columns if c != "tokens_per_s"]
    assert first.select(cols).equals(again.select(cols))


def test_damage_found_while_collecting_is_one_line_naming_the_group(tmp_path, make_raw, capsys):
    base = make_raw(train={"steps": 6, "eval_every": 3})
    base.pop("members")
    spec = {"base": base, "members": {"lr": [1e-3, 1e-2]}}
    sweep.run_sweep(spec, tmp_path / "s")
    g = sweep.expand(spec)[0]
    (tmp_path / "s" / "groups" / g.id / "metrics.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(StoreError, match=f"group {g.id} .*metrics.parquet: does not match the hash"):
        sweep.collect([g], tmp_path / "s" / "groups")
    assert not (tmp_path / "s" / "groups" / g.id).exists()  # set aside for the next run to retrain


def test_report_sets_aside_a_damaged_record_and_says_so(tmp_path, capsys):
    from proxyscale.outputs import report

    rec = {"name": "figX", "title": "t", "scale": "micro", "command": "c", "seconds": 1.0, "figures": [],
           "verdicts": [{"claim": "c", "verdict": "reproduced", "detail": "d"}]}
    for name in ("figA", "figB"):
        (tmp_path / name).mkdir()
        store.write_json(tmp_path / name / "verdicts.json", {**rec, "name": name})
    (tmp_path / "figB" / "verdicts.json").write_text('{"name": "figB", "tit')
    page = report.build(tmp_path).read_text()
    assert "figA" in page and "figB" in page and "damaged" in page
    assert "damaged" in capsys.readouterr().err
    assert any(p.name.startswith("verdicts.json.damaged-") for p in (tmp_path / "figB").iterdir())


# ---- a full disk ------------------------------------------------------------------------------------------------------

def test_full_disk_while_checkpointing_says_so_leaves_nothing_and_resumes(tmp_path, make_raw, monkeypatch):
    """Reported: a full disk gave `RuntimeError: [enforce fail at inline_container.cc:672]` and left
    .state.pt.tmpPID behind."""
    cfg = cfg_of(make_raw)
    train_group(cfg, tmp_path / "whole")
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def full_disk_save(obj, f, *a, **k):  # what torch's zip writer does when the disk fills: part written, then this
        calls.append(f)
        if len(calls) == 2:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(StoreError, match=r"checkpoint/state.new.pt: no space left on device; free some space"):
        train_group(cfg, out)
    assert leftovers(tmp_path) == [] and store.checkpoint_step(out) == 4  # the last good checkpoint is intact
    monkeypatch.setattr(torch, "save", real_save)
    train_group(cfg, out)
    assert same_results(out, tmp_path / "whole")


def test_full_disk_while_finishing_is_one_line_exit_1(tmp_path, make_raw, monkeypatch, capsys):
    """Reported: a polars "Invalid thrift" error and a .metrics.parquet.tmpPID left inside a finished directory."""
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(make_raw(train={"steps": 6, "eval_every": 3})))

    def no_space(self, file, *a, **k):
        with open(file, "wb") as fh:
            fh.write(b"PAR1")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", no_space)
    assert main(["train", "--quiet", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metrics.parquet: no space left on device" in err
    assert leftovers(tmp_path) == [] and not store.is_done(tmp_path / "run")


def test_report_reads_a_sweep_directory(tmp_path, make_raw):
    """Reported: `proxyscale report` could not read a sweep directory."""
    base = make_raw(train={"steps": 6, "eval_every": 3})
    base.pop("members")
    sweep.run_sweep({"name": "mine", "base": base, "members": {"lr": [1e-3, 1e-2]}}, tmp_path / "s")
    assert main(["report", str(tmp_path / "s")]) == 0
    page = (tmp_path / "s" / "report.html").read_text()
    assert "sweep mine" in page and "data:image/png;base64," in page and "lr_sensitivity" in page
