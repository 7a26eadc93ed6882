import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import yaml

from proxyscale.cli import main

ISSUE_YAML = """
model: {width: 64, depth: 2, heads: 2, qk_layernorm: true, vocab: byte}
data:  {corpus: kjv, seq_len: 64, batch_size: 8}
train: {steps: 100, eval_every: 50, seed: 0, threads: 1}
optim: {warmup: 10, weight_decay: 1.0e-4, independent_weight_decay: true, eps: 1.0e-8, z_loss: 1.0e-4}
members: {lr: [1.0e-3, 1.0e-2, 1.0e-1]}   # lists expand as a grid; any member scalar may be listed
"""


def write(tmp_path, raw, name="g.yaml"):
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def test_issue_yaml_trains_and_rerun_does_nothing(tmp_path, capsys):
    cfg = write(tmp_path, ISSUE_YAML)
    out = tmp_path / "out"
    code = main(["train", str(cfg), "--out", str(out), "--set", "train.steps=12", "--set", "train.eval_every=6", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "LR sensitivity" in text and "final eval loss" in text
    for name in ("config.json", "metrics.parquet", "summary.json", "DONE"):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 12
    assert pl.read_parquet(out / "metrics.parquet")["member"].n_unique() == 3
    assert main(["train", str(cfg), "--out", str(out), "--set", "train.steps=12", "--set", "train.eval_every=6", "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_console_script_entry_point(tmp_path, make_raw):
    cfg = write(tmp_path, make_raw(train={"steps": 3, "eval_every": 3}))
    proc = subprocess.run([sys.executable, "-m", "proxyscale", "train", str(cfg), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "final eval loss" in proc.stdout


def bad_cases(tmp_path, make_raw):
    (tmp_path / "notutf8.txt").write_bytes(b"\xff\xfe\xfa" * 5000)
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    return [
        (make_raw(model={"widht": 64}), "model.widht", "did you mean 'width'"),
        (make_raw(model={"width": 30, "heads": 4}), "model.heads", "does not divide"),
        (make_raw(members={"lr": [1e-3, -0.1]}), "members.lr", "must be > 0"),
        (make_raw(optim={"lr": -1.0}), "optim.lr", "must be > 0"),
        (make_raw(data={"corpus": str(tmp_path / "missing.txt")}), "data.corpus", "no such file"),
        (make_raw(data={"corpus": str(tmp_path / "notutf8.txt")}), "data.corpus", "not UTF-8"),
        (make_raw(data={"corpus": str(tmp_path / "odd.bin")}), "data.corpus", "not a uint16 token file"),
        (make_raw(members={"learning_rate": [0.1]}), "members.learning_rate", "valid:"),
        (make_raw(model={"qk_layernorm": "sometimes"}), "model.qk_layernorm", "valid:"),
        (make_raw(model={"vocab": "words"}), "model.vocab", "valid:"),
        ({**make_raw(), "trian": {}}, "trian", "did you mean 'train'"),
    ]


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, make_raw, capsys):
    for i, (raw, field, hint) in enumerate(bad_cases(tmp_path, make_raw)):
        cfg = write(tmp_path, raw, f"bad{i}.yaml")
        out = tmp_path / f"out{i}"
        code = main(["train", str(cfg), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (field, err)
        assert len(err.splitlines()) == 1, err
        assert field in err and hint in err, err
        assert not out.exists(), field


def test_bad_set_and_missing_config(tmp_path, make_raw, capsys):
    cfg = write(tmp_path, make_raw())
    assert main(["train", str(cfg), "--out", str(tmp_path / "o"), "--set", "optim.lr"]) == 2
    assert "section.field=value" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_finished_dir_with_other_config_is_refused(tmp_path, make_raw, capsys):
    out = tmp_path / "o"
    assert main(["train", str(write(tmp_path, make_raw(train={"steps": 2}))), "--out", str(out), "--quiet"]) == 0
    assert main(["train", str(write(tmp_path, make_raw(train={"steps": 3}))), "--out", str(out), "--quiet"]) == 2
    assert "different config" in capsys.readouterr().err


def test_bin_shards_and_vocab_check(tmp_path, make_raw, capsys):
    folder = tmp_path / "shards"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, 300, 20000, dtype=np.uint16).tofile(folder / "train.bin")
    rng.integers(0, 300, 4000, dtype=np.uint16).tofile(folder / "val.bin")
    cfg = write(tmp_path, make_raw(data={"corpus": str(folder)}, train={"steps": 2}))
    assert main(["train", str(cfg), "--out", str(tmp_path / "a"), "--quiet"]) == 2  # ids up to 299 > byte vocab
    assert "model.vocab" in capsys.readouterr().err
    assert main(["train", str(cfg), "--out", str(tmp_path / "b"), "--set", "model.vocab=300", "--quiet"]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["vocab_size"] == 300


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_other_precisions_run(tmp_path, make_raw, precision):
    cfg = write(tmp_path, make_raw(train={"steps": 2, "precision": precision}))
    assert main(["train", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 0


LIGHT = """
import sys
from proxyscale.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("heavy:", sorted(m for m in ("torch", "transformers", "lightning") if m in sys.modules))
"""


def test_light_commands_do_not_import_torch(tmp_path):
    """``--help``, ``list`` and ``report`` (issue 15 §6) start in a fraction of a second: no torch."""
    mon = tmp_path / "mon"
    mon.mkdir()
    pl.DataFrame({"step": [0, 1], "member": [0, 0], "loss": [5.0, 4.0], "attn_logit_max/0": [1.0, 2.0]}).write_parquet(
        mon / "metrics.parquet")
    (mon / "alarms.json").write_text("[]")
    (mon / "monitor.json").write_text(json.dumps({"model": "GPT", "attention": "nanoGPT", "update_rms": None,
                                                  "layers": 1, "every": 1, "steps": 2, "alarms": 0}))
    for args in (["--help"], ["list"], ["report", str(mon)]):
        out = subprocess.run([sys.executable, "-c", LIGHT, *args], capture_output=True, text=True, timeout=120)
        assert "heavy: []" in out.stdout, (args, out.stdout[-500:], out.stderr[-500:])
    assert (mon / "report.html").exists()


def test_a_verdicts_numbers_print_as_text_not_markup(tmp_path, capsys, monkeypatch):
    """A verdict's detail such as "[one seed: seed noise not measured]" reaches the terminal: rich would take the
    bracketed text for a markup tag and drop it (found on the oec experiment's output)."""
    from proxyscale.jobs import reproduce
    from proxyscale.core.records import ExperimentRecord, Verdict

    record = ExperimentRecord(name="fig2", title="t", scale="micro", command="c", seconds=1.0, figures=[],
                              verdicts=[Verdict("a [claim]", "not reproduced", "0.1 vs 0.2 [one seed: seed noise "
                                                "not measured]")])
    monkeypatch.setattr(reproduce, "reproduce", lambda *a, **k: record)
    monkeypatch.setattr("proxyscale.runs.sweep.check_fits", lambda *a, **k: None)
    monkeypatch.setattr("proxyscale.outputs.report.build", lambda out: out / "report.html")
    assert main(["reproduce", "fig2", "--out", str(tmp_path / "r")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "[one seed: seed noise not measured]" in out and "a [claim]" in out
