"""train.log_to: every recorded column reaches TensorBoard and (offline) W&B, one run per member tagged by its
scalars, with the numbers of metrics.parquet; a sweep's figures follow. Read back from the files they wrote."""

import json
import struct

import polars as pl
import pytest
import yaml

from proxyscale.engine.callbacks import StepEnd
from proxyscale.core import config, table
from proxyscale.runs import sweep
from proxyscale.cli import main

pytest.importorskip("tensorboard", reason="LOUD SKIP: tensorboard not installed (pip install 'proxyscale[tensorboard]')")
pytest.importorskip("wandb", reason="LOUD SKIP: wandb not installed (pip install 'proxyscale[wandb]')")


def tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def wandb_records(path):
    """The records of an offline W&B run file (a LevelDB-style log of protobuf records, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1 or kind == 4:
            rec = pb.Record()
            rec.ParseFromString(buf + chunk if kind == 4 else chunk)
            yield rec
        buf = chunk if kind == 2 else buf + chunk if kind == 3 else b""


def key(item):
    return item.key or "/".join(item.nested_key)  # wandb-core writes nested_key


def wandb_run(path):
    name, cfg, history = None, {}, []
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            name = rec.run.display_name
            cfg.update({key(it): json.loads(it.value_json) for it in rec.run.config.update})
        elif kind == "config":
            cfg.update({key(it): json.loads(it.value_json) for it in rec.config.update})
        elif kind == "history":
            history.append({key(it): json.loads(it.value_json) for it in rec.history.item})
    return name, cfg, history


def test_train_streams_every_column_to_tensorboard_and_wandb(tmp_path, make_raw, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default: no account, no network
    raw = make_raw(train={"steps": 6, "eval_every": 3}, members={"lr": [1e-3, 1e-2]})
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--quiet", "--log-to", "tensorboard,wandb"]) == 0
    metrics = pl.read_parquet(out / "metrics.parquet")
    cfg = config.load(str(path))
    assert json.loads((out / "DONE").read_text())["run_id"] == table.run_id(cfg)  # log_to is not identity

    folders = sorted((out / "tensorboard").iterdir())
    assert [f.name for f in folders] == ["m00_lr=0.001", "m01_lr=0.01"]
    for member, folder in enumerate(folders):
        acc = tensorboard_scalars(folder)
        mine = metrics.filter(pl.col("member") == member)
        for column in ("loss", "eval_loss", "attn_logit_max/0", "grad_rms/layers.0.w1", "lr"):
            assert column in acc.Tags()["scalars"], column
            logged = {e.step: e.value for e in acc.Scalars(column)}
            expected = {s: v for s, v in zip(mine["step"], mine[column]) if v is not None}
            assert logged.keys() == expected.keys() and all(
                abs(logged[s] - expected[s]) <= 1e-6 * max(1.0, abs(expected[s])) for s in expected), column

    runs = sorted(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    seen = {}
    for f in runs:
        name, run_cfg, history = wandb_run(f)
        member = 0 if "lr=0.001" in name else 1
        seen[member] = name
        assert run_cfg["member.lr"] == [1e-3, 1e-2][member] and run_cfg["model.width"] == 32
        losses = {h["_step"]: h["loss"] for h in history if "loss" in h}
        mine = metrics.filter(pl.col("member") == member).filter(pl.col("loss").is_not_null())
        assert losses == pytest.approx(dict(zip(mine["step"], mine["loss"])), rel=1e-6)
    assert set(seen) == {0, 1} and all(table.run_id(cfg) in n for n in seen.values())


def test_a_sweep_logs_its_figure_and_keeps_its_group_ids(tmp_path, make_raw):
    base = make_raw(train={"steps": 4, "eval_every": 2})
    base.pop("members")
    spec = {"name": "t", "base": base, "members": {"lr": [1e-3, 1e-2]}}
    logged = sweep.merge(spec, {"base": {"train": {"log_to": ["tensorboard"]}}})
    assert [g.id for g in sweep.expand(logged)] == [g.id for g in sweep.expand(spec)]
    results = sweep.run_sweep(logged, tmp_path / "s")
    plain = sweep.run_sweep(spec, tmp_path / "plain")
    cols = [c for c in results.columns if c != "tokens_per_s"]
    assert results.select(cols).equals(plain.select(cols))
    acc = tensorboard_scalars(tmp_path / "s" / "tensorboard" / "figures")
    assert acc.Tags()["images"] == ["lr_vs_loss"]


def test_a_resumed_group_logs_each_step_once(tmp_path, make_raw, monkeypatch):
    """Interrupted after step 6 with a checkpoint at step 4: steps 4-6 were logged and come again on resume.
    TensorBoard shows each step once, with the resumed values (those of metrics.parquet); W&B continues the same
    run ids."""
    from proxyscale.engine.train import train_group

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = config.from_dict(make_raw(train={"steps": 10, "eval_every": 5, "checkpoint_every": 4, "log_every": 1,
                                           "log_to": ["tensorboard", "wandb"]}, members={"lr": [1e-3, 1e-2]}))
    out = tmp_path / "run"

    def stop(step):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(cfg, out, callbacks=[StepEnd(stop)])
    train_group(cfg, out)
    metrics = pl.read_parquet(out / "metrics.parquet")
    for member, folder in enumerate(sorted((out / "tensorboard").iterdir())):
        events = tensorboard_scalars(folder).Scalars("loss")
        steps = [e.step for e in events]
        assert sorted(steps) == sorted(set(steps)) == list(range(10)), steps
        mine = metrics.filter((pl.col("member") == member) & pl.col("loss").is_not_null())
        assert {e.step: e.value for e in events} == pytest.approx(dict(zip(mine["step"], mine["loss"])), rel=1e-6)
    ids = {}
    for f in out.glob("wandb/offline-run-*/run-*.wandb"):
        for rec in wandb_records(f):
            if rec.WhichOneof("record_type") == "run":
                ids.setdefault(rec.run.run_id, []).append(f)
    assert len(ids) == 2 and all(len(files) == 2 for files in ids.values())  # 2 members, each run continued once
