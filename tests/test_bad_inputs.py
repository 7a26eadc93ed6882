"""Every bad input is a one-line error naming what is wrong and what would be valid, exit 2, nothing on disk.

One table, across train, sweep, reproduce and report: each case builds its input in a fresh folder, runs the
command, and checks the exit code, that stderr is one line naming the field or file, and that the command wrote
nothing (the folder holds exactly what the case put there).
"""

import pytest
import yaml

from proxyscale.engine import device
from proxyscale.cli import main
from tests.conftest import tiny

SPEC = {"name": "t", "sizes": [{"width": 32, "depth": 1, "heads": 1}], "members": {"lr": [1e-3, 1e-2]}}


def group(**over):
    return tiny(**{**over, "train": {"steps": 4, "eval_every": 2, **over.get("train", {})}})


def spec(**over):
    base = group()
    base.pop("members")
    return {**SPEC, "base": base, **over}


def yaml_file(d, obj, name="in.yaml"):
    path = d / name
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return str(path)


def train(raw, *extra):
    return lambda d: ["train", yaml_file(d, raw), "--out", str(d / "out"), "--quiet", *extra]


def sweep(obj, *extra):
    return lambda d: ["sweep", yaml_file(d, obj), "--out", str(d / "out"), *extra]


def dangling(d):
    (d / "link").symlink_to(d / "gone")
    return str(d / "link")


def a_file(d, name="taken"):
    (d / name).write_text("not a directory")
    return str(d / name)


CASES = {
    # the mitigations after the paper (issue 16)
    "attention cap zero": (train(group(members={"attn_softcap": [0.0]})), "members.attn_softcap: must be > 0"),
    "final cap negative": (train(group(model={"final_softcap": -30.0})), "model.final_softcap: must be > 0"),
    "qk-clip tau zero": (train(group(optim={"qk_clip": 0})), "optim.qk_clip: must be > 0"),
    "qk-clip tau negative": (train(group(members={"qk_clip": [100.0, -1.0]})), "members.qk_clip: must be > 0"),
    "zclip threshold negative": (train(group(members={"zclip": [-2.5]})), "members.zclip: must be > 0"),
    "qk-clip alpha above one": (train(group(optim={"qk_clip_alpha": 1.5})), "optim.qk_clip_alpha: must be in [0, 1]"),
    "depth alpha negative": (train(group(model={"depth_alpha": -0.5})), "model.depth_alpha: must be in [0, 1]"),
    "zclip alpha one": (train(group(optim={"zclip_alpha": 1.0})), "optim.zclip_alpha: must be in (0, 1)"),
    "unknown optimizer": (train(group(optim={"optimizer": "sgd"})), "optim.optimizer: got 'sgd'; valid: adamw"),
    "unknown muon lr adjustment": (train(group(optim={"optimizer": "muon", "muon_lr_adjust": "spectral"})),
                                   "optim.muon_lr_adjust"),
    "qkv-layernorm without qk-layernorm": (train(group(model={"qk_layernorm": False, "qkv_layernorm": True})),
                                           "model.qkv_layernorm: needs model.qk_layernorm"),
    "unknown norm placement": (train(group(model={"norm_placement": "post"})), "model.norm_placement"),
    # train: fields of every section (paper defaults documented in config.py)
    "seed negative": (train(group(train={"seed": -1})), "train.seed"),
    "lr inf": (train(group(optim={"lr": float("inf")})), "optim.lr: got inf; must be a finite number"),
    "eps inf": (train(group(optim={"eps": float("inf")})), "optim.eps"),
    "weight decay nan": (train(group(optim={"weight_decay": float("nan")})), "optim.weight_decay"),
    "member lr inf": (train(group(members={"lr": [1e-3, float("inf")]})), "members.lr"),
    "member lr zero": (train(group(members={"lr": [0.0]})), "members.lr: must be > 0"),
    "member z-loss negative": (train(group(members={"z_loss": [-1.0]})), "members.z_loss"),
    "member warmup negative": (train(group(members={"warmup": [-1]})), "members.warmup"),
    "member beta2 one": (train(group(members={"beta2": [1.0]})), "members.beta2"),
    "member seed negative": (train(group(members={"seed": [0, -2]})), "members.seed"),
    "member unknown": (train(group(members={"bogus": [1]})), "members.bogus"),
    "width zero": (train(group(model={"width": 0})), "model.width"),
    "heads do not divide": (train(group(model={"heads": 3})), "model.heads"),
    "qk-layernorm value": (train(group(model={"qk_layernorm": "sometimes"})), "model.qk_layernorm"),
    "vocab too small": (train(group(model={"vocab": "bpe:10"})), "model.vocab"),
    "kappa negative": (train(group(model={"kappa": -1.0})), "model.kappa"),
    "field typo": (train(group(model={"widht": 64})), "model.widht"),
    "seq_len zero": (train(group(data={"seq_len": 0})), "data.seq_len"),
    "batch negative": (train(group(data={"batch_size": -1})), "data.batch_size"),
    "val fraction": (train(group(data={"val_fraction": 1.5})), "data.val_fraction"),
    "corpus missing": (train(group(data={"corpus": "/nonexistent/corpus.txt"})), "data.corpus"),
    "steps zero": (train(group(train={"steps": 0})), "train.steps"),
    "precision": (train(group(train={"precision": "fp8"})), "train.precision"),
    "compile": (train(group(train={"compile": "maybe"})), "train.compile"),
    "device": (train(group(train={"device": "tpu"})), "train.device"),
    "log_every negative": (train(group(train={"log_every": -1})), "train.log_every"),
    "micro-batch does not divide": (train(group(train={"micro_batch_size": 3})),
                                    "train.micro_batch_size"),
    "beta1 one": (train(group(optim={"beta1": 1.0})), "optim.beta1"),
    "clip zero": (train(group(optim={"clip": 0.0})), "optim.clip"),
    "min_lr inf": (train(group(optim={"min_lr": float("inf")})), "optim.min_lr"),
    "section typo": (train({**group(), "modle": {}}), "modle"),
    "unknown logger": (train(group(train={"log_to": ["tensorbord"]})), "train.log_to: unknown logger 'tensorbord'"),
    "--log-to unknown": (train(group(), "--log-to", "mlflow"), "train.log_to"),
    "unknown executor": (sweep(spec(), "--executor", "k8s"), "executor.kind"),
    # train: the file and the command line
    "config missing": (lambda d: ["train", str(d / "none.yaml"), "--out", str(d / "out")], "no such config file"),
    "config is a folder": (lambda d: ["train", str(d), "--out", str(d / "out")], "is a folder"),
    "config not UTF-8": (lambda d: ["train", yaml_file(d, "x", "bad.yaml") and _bytes(d / "bad.yaml"),
                                    "--out", str(d / "out")], "not UTF-8"),
    "config not YAML": (lambda d: ["train", yaml_file(d, "a: [1, 2\nb: }"), "--out", str(d / "out")], "not valid YAML"),
    "config a list": (lambda d: ["train", yaml_file(d, [1, 2]), "--out", str(d / "out")], "expected a mapping"),
    "out is a file": (lambda d: ["train", yaml_file(d, group()), "--out", a_file(d)], "is a file, not a directory"),
    "--set shadowed by members": (train(group(members={"lr": [1e-3, 1e-2]}), "--set", "optim.lr=0.01"),
                                  "use --set members.lr"),
    "--set without =": (train(group(), "--set", "optim.lr"), "expected section.field=value"),
    "--set not a number": (train(group(), "--set", "model.width=abc"), "model.width"),
    "--set non-finite": (train(group(), "--set", "optim.lr=.inf"), "optim.lr"),
    # sweep
    "spec a list": (sweep([1, 2]), "expected a mapping"),
    "spec base a list": (sweep(spec(base=[1])), "base: expected a mapping"),
    "spec members a list": (sweep(spec(members=[1e-3])), "members: expected a mapping"),
    "spec axes empty values": (sweep(spec(axes={"model.qk_layernorm": []})), "axes.model.qk_layernorm"),
    "spec unknown ladder": (sweep(spec(sizes="huge")), "sizes"),
    "spec unknown key": (sweep(spec(grid={})), "grid"),
    "spec parts not a list": (sweep(spec(parts={"a": 1})), "parts"),
    "spec missing corpus": (sweep(spec(base={"data": {"corpus": "/nonexistent/c.txt"}})), "data.corpus"),
    "spec bad lr": (sweep(spec(members={"lr": [float("nan")]})), "members.lr"),
    "workers zero": (sweep(spec(), "--workers", "0"), "--workers"),
    "workers negative": (sweep(spec(), "--workers", "-3"), "--workers"),
    "workers not a number": (sweep(spec(), "--workers", "two"), "--workers"),
    "sweep out is a file": (lambda d: ["sweep", yaml_file(d, spec()), "--out", a_file(d)], "is a file"),
    "spec missing": (lambda d: ["sweep", str(d / "none.yaml"), "--out", str(d / "out")], "no such sweep spec"),
    # reproduce
    "unknown experiment": (lambda d: ["reproduce", "fig99", "--out", str(d / "out")], "fig99"),
    "unknown scale": (lambda d: ["reproduce", "fig1", "--scale", "huge", "--out", str(d / "out")], "--scale"),
    "reproduce out is a file": (lambda d: ["reproduce", "fig2", "--out", a_file(d)], "is a file"),
    "reproduce workers zero": (lambda d: ["reproduce", "fig2", "--workers", "0", "--out", str(d / "out")],
                               "--workers"),
    # forecast
    "forecast target missing": (lambda d: ["forecast", str(d / "none.yaml"), "--out", str(d / "out")],
                                "no such config file"),
    "forecast target a grid": (lambda d: ["forecast", yaml_file(d, group(members={"lr": [1e-3, 1e-2]})),
                                          "--out", str(d / "out")], "a target is one run"),
    "forecast target typo": (lambda d: ["forecast", yaml_file(d, group(model={"widht": 64})), "--out",
                                        str(d / "out")], "model.widht"),
    "forecast scale": (lambda d: ["forecast", yaml_file(d, group()), "--scale", "paper", "--out", str(d / "out")],
                       "--scale"),
    "forecast out is a file": (lambda d: ["forecast", yaml_file(d, group()), "--out", a_file(d)], "is a file"),
    # report
    "report missing dir": (lambda d: ["report", str(d / "none")], "no such directory"),
    "report on a file": (lambda d: ["report", a_file(d)], "is a file"),
    "report on an empty dir": (lambda d: ["report", str((d / "empty").mkdir() or d / "empty")], "no reproduced"),
    "unknown command": (lambda d: ["trian"], "invalid choice"),
    # issue 15 §10: the holes a new user found
    "axis on a member scalar": (sweep(spec(axes={"optim.lr": [0.01, 0.1]})),
                                "axes.optim.lr: members.lr is listed"),
    "duplicate key": (lambda d: ["train", yaml_file(d, "model: {width: 32, width: 64}\n"), "--out", str(d / "out")],
                      "key 'width' given twice"),
    "duplicate section": (lambda d: ["sweep", yaml_file(d, "name: t\naxes: {model.qk_layernorm: [head]}\n"
                                                           "axes: {model.width: [32]}\n"), "--out", str(d / "out")],
                          "key 'axes' given twice in one mapping (line 3)"),
    "out under a file": (lambda d: ["train", yaml_file(d, group()), "--out", a_file(d) + "/run"],
                         "no directory can be made under it"),
    "out a dangling symlink": (lambda d: ["train", yaml_file(d, group()), "--out", dangling(d)],
                               "which does not exist"),
    "out name too long": (lambda d: ["train", yaml_file(d, group()), "--out", str(d / ("x" * 300))],
                          "over this filesystem's"),
    "sweep out under a file": (lambda d: ["sweep", yaml_file(d, spec()), "--out", a_file(d) + "/s"],
                               "no directory can be made under it"),
    "ray address garbage": (sweep(spec(), "--executor", "ray", "--ray-address", "garbage"),
                            "--ray-address 'garbage': not a Ray address"),
    # issue 21 §4: the holes a new user found in the first hour
    "empty group file": (lambda d: ["train", yaml_file(d, ""), "--out", str(d / "out")], "in.yaml: empty; a group file"),
    "group file of comments only": (lambda d: ["train", yaml_file(d, "# nothing yet\n"), "--out", str(d / "out")],
                                    "empty"),
    "steps too many to log": (train(group(train={"steps": 10**11})), "fewer train.steps or a larger train.log_every"),
    "steps as a float": (train(group(train={"steps": 1e30})), "train.steps: expected an integer"),
    "log every step of a billion": (train(group(train={"steps": 10**9, "log_every": 1})), "train.log_every"),
    "width too big for the machine": (train(group(model={"width": 10**6, "heads": 1})),
                                      "a smaller model.width or model.depth"),
    "out is a file, header not printed": (lambda d: ["train", yaml_file(d, group()), "--out", a_file(d)],
                                          "is a file, not a directory"),
    "sweep given a group file": (lambda d: ["sweep", yaml_file(d, group()), "--out", str(d / "out")],
                                 "a group file (sections data, model, optim, train), not a sweep spec; train it with "
                                 "proxyscale train"),
    "sweep group too big": (sweep(spec(sizes=[{"width": 10**6, "depth": 1, "heads": 1}])),
                            "group size=d1000000-L1 (1.2e+07M): train: a group of 2 members does not fit"),
    "forecast workers zero": (lambda d: ["forecast", yaml_file(d, group()), "--workers", "0", "--out", str(d / "out")],
                              "--workers: must be at least 1"),
    "forecast target empty": (lambda d: ["forecast", yaml_file(d, ""), "--out", str(d / "out")], "empty"),
    # issue 23: Output Embedding Centering
    "mu_loss negative": (train(group(members={"mu_loss": [0.0, -1e-4]})), "members.mu_loss: must be >= 0"),
    "mu_loss as optim negative": (train(group(optim={"mu_loss": -1.0})), "optim.mu_loss: must be >= 0"),
    "mu_centering not a switch": (train(group(members={"mu_centering": ["sometimes"]})), "members.mu_centering"),
    # issue 22: seeds
    "seeds zero": (sweep(spec(seeds=0)), "seeds: a count from 1 to 1000, got 0"),
    "seeds text": (sweep(spec(seeds="three")), "seeds: expected a count (e.g. 3) or a list"),
    "seeds repeated": (sweep(spec(seeds=[1, 1])), "seeds: expected a non-empty list of distinct integers"),
    "seeds negative": (sweep(spec(seeds=[0, -1])), "seeds: expected a non-empty list of distinct integers"),
    "seeds beside members.seed": (sweep(spec(seeds=2, members={"lr": [1e-3], "seed": [0]})),
                                  "seeds: members.seed is listed too"),
    "--seeds not a number": (sweep(spec(), "--seeds", "x"), "argument --seeds: expected a count"),
    "reproduce --seeds zero": (lambda d: ["reproduce", "fig2", "--seeds", "0", "--out", str(d / "out")],
                               "seeds: a count from 1 to 1000"),
    "forecast --seeds repeated": (lambda d: ["forecast", yaml_file(d, group()), "--seeds", "1,1", "--out",
                                             str(d / "out")], "seeds: expected a non-empty list"),
    "reproduce too big for the machine": (lambda d: ["reproduce", "fig1", "--scale", "paper", "--out",
                                                     str(d / "out")], "does not fit on cpu"),
}


def _bytes(path):
    path.write_bytes(b"model: {width: \xff\xfe}\n")
    return str(path)


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, capsys):
    build, expected = CASES[name]
    argv = build(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(argv)
    out, err = capsys.readouterr()
    err = err.strip()
    assert code == 2, (name, err)
    assert len(err.splitlines()) == 1, err
    assert out == "", out  # refused before anything is printed (issue 21 §4: no header, then an error)
    assert expected in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "something was written"


ISSUE_21 = ["empty group file", "steps too many to log", "width too big for the machine", "out is a file, header not "
            "printed", "sweep given a group file", "sweep group too big", "forecast workers zero"]


@pytest.mark.parametrize("name", ISSUE_21)
def test_bad_input_as_a_user_runs_it(name, tmp_path):
    """The cases a new user met (issue 21 §4), as that user ran them: the console command in a subprocess, stdout
    and stderr as a terminal-less log sees them. One line on stderr, nothing on stdout, exit 2, nothing written."""
    import os
    import subprocess
    import sys

    build, expected = CASES[name]
    argv = build(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "proxyscale", *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "400"})
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and expected in err, (proc.returncode, err)
    assert proc.stdout == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "something was written"


def test_out_on_a_read_only_filesystem_is_one_line(tmp_path, capsys, monkeypatch):
    """A read-only place (a mounted dataset, /proc) cannot be faked without root-only mounts: statvfs is told so."""
    import os

    real = os.statvfs

    class ReadOnly:
        def __init__(self, st):
            self.st = st

        def __getattr__(self, name):
            return os.ST_RDONLY | self.st.f_flag if name == "f_flag" else getattr(self.st, name)

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly(real(p)))
    assert main(train(group())(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "read-only filesystem" in err and not (tmp_path / "out").exists()


def test_monitor_out_naming_a_file_is_one_error_and_leaves_the_model_alone(tmp_path):
    import torch

    from proxyscale import monitor
    from proxyscale.core import store

    model = torch.nn.Linear(4, 4)
    with pytest.raises(store.StoreError, match="monitor out=.*is a file"):
        monitor.attach(model, None, out=a_file(tmp_path))
    assert not model._forward_hooks


def test_a_group_too_big_for_memory_is_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(device, "free_bytes", lambda dev: 10 << 20)
    argv = train(group(members={"lr": [1e-3] * 2, "seed": list(range(500))}))(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a group of 1000 members does not fit" in err and "GiB" in err
    assert not (tmp_path / "out").exists()


def test_header_names_the_precision_and_device_that_run(tmp_path, capsys):
    assert main(train(group(train={"precision": "auto", "steps": 2}))(tmp_path)) == 0
    header = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    head = header[:header.index("final eval loss")]
    assert " on cpu" in head and ("bf16 on" in head or "fp32 on" in head) and "auto" not in head


def test_running_out_of_memory_mid_run_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    """Reported: 10,000 members died after 51 s with the CPU allocator's error. The estimate refuses what it can
    see; what it cannot (here a step that fails to allocate at micro-batch 1) ends in one line, exit 2."""
    from proxyscale.engine import train as train_mod

    def no_memory(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 81920000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(train_mod.GroupRun, "_loss", no_memory)
    argv = train(group(data={"batch_size": 2}, train={"micro_batch_size": 1}))(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ran out of memory on cpu at micro-batch 1" in err
    assert not (tmp_path / "out" / "DONE").exists() and not (tmp_path / "out" / "config.json").exists()


def test_the_memory_plan_counts_the_metrics_log_on_a_cpu(tmp_path, capsys, monkeypatch):
    """Reported: a 10,000-member group grew past 9.7 GB; the metrics log (members × logged steps × columns) was
    not in the plan. A group whose state and log leave no room for one sequence is refused before it allocates."""
    from proxyscale.core import config
    from proxyscale.engine.train import GroupRun

    monkeypatch.setattr(device, "free_bytes", lambda dev: 800 << 20)
    many = {"lr": [1e-3], "seed": list(range(400))}
    argv = train(group(members=many, train={"steps": 3000, "log_every": 1, "eval_every": 1000}))(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metrics log" in err and "train.log_every" in err, err
    assert not (tmp_path / "out").exists()
    rare = config.from_dict(group(members=many, train={"steps": 3000, "log_every": 1000, "eval_every": 1000}))
    assert GroupRun(rare, tmp_path / "rare").micro_batch >= 1  # logged rarely, the same group fits
