"""The loop for one group: K members trained as one batched model on the same batches."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import store
from .analysis import lr_sensitivity, lr_sensitivity_coupled
from .config import MEMBER_SCALARS, ConfigError, GroupConfig, Member
from .data import Batches, TokenData, load_data
from .diagnostics import MetricsLog, step_columns
from .losses import loss_parts, total_loss
from .model import ProxyGPT, Recorder, count_params, init_params, param_specs
from .optim import BatchedAdamW, FlatParams


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for but no CUDA GPU is visible; use cpu or auto")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the device computes it natively, else fp32 (see TrainConfig.precision)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for matmuls (paper §3.1); parameters and optimizer state stay float32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _config_json(cfg: GroupConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict()))


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Configs that give the same results: train.threads and train.device may differ."""
    strip = lambda d: {**d, "train": {k: v for k, v in d["train"].items() if k not in ("threads", "device")}}  # noqa: E731
    return strip(a) == strip(b)


@torch.no_grad()
def evaluate(model: ProxyGPT, params: dict[str, torch.Tensor], batches: Batches, device: torch.device,
             precision: str) -> torch.Tensor:
    """Validation cross-entropy per member [K] (z-loss excluded, paper §3), over the fixed eval windows."""
    total = None
    for x, y in batches.eval:
        with autocast(device, precision):
            logits = model.forward(params, x)
        ce = loss_parts(logits, y, diagnostics=False).ce
        total = ce if total is None else total + ce
    return total / len(batches.eval)


def sensitivity_table(members: list[Member], final: list[float], l0: list[float]) -> list[dict[str, Any]]:
    """LR sensitivity for every set of members that differ only in LR and span at least two LRs."""
    sets: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        key = tuple((n, getattr(m, n)) for n in MEMBER_SCALARS if n != "lr")
        sets.setdefault(key, []).append(i)
    rows = []
    for key, idx in sets.items():
        lrs = [members[i].lr for i in idx]
        if len(set(lrs)) < 2:
            continue
        losses, refs = [final[i] for i in idx], [l0[i] for i in idx]
        coupled = not dict(key)["independent_weight_decay"]
        value = lr_sensitivity_coupled(lrs, losses, refs) if coupled else lr_sensitivity(losses, refs)
        rows.append({**dict(key), "lrs": lrs, "lr_sensitivity": value})
    return rows


class GroupRun:
    """State of one group's training; ``run()`` trains to the end, checkpointing and resuming in ``out``."""

    def __init__(self, cfg: GroupConfig, out: Path, data: TokenData | None = None) -> None:
        self._started = time.perf_counter()  # setup (data, init) counts towards the group's seconds
        self.cfg, self.out = cfg, Path(out)
        t = cfg.train
        self.device = resolve_device(t.device)
        self.precision = resolve_precision(t.precision, self.device)
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        self.members = cfg.member_list()
        self.data = data if data is not None else load_data(cfg.data, cfg.model.vocab)
        self.vocab_size = self.data.vocab_size
        self.specs = param_specs(cfg.model, self.vocab_size)
        self.n_params = count_params(cfg.model, self.vocab_size)
        self.model = ProxyGPT(cfg.model, self.vocab_size, cfg.data.seq_len, self.device)
        self.batches = Batches(self.data, cfg.data, t.seed, self.device)
        K = len(self.members)
        init = init_params(cfg.model, self.vocab_size, [m.seed for m in self.members])
        self.fp = FlatParams({n: p.to(self.device) for n, p in init.items()})
        self.params = self.fp.params  # leaf views into fp.flat [K, P], the float32 master weights
        self.opt = BatchedAdamW(self.fp, self.specs, self.members, cfg.optim, t.steps)
        self.z_coef = torch.tensor([m.z_loss for m in self.members], device=self.device)
        self.active = torch.ones(K, dtype=torch.bool, device=self.device)
        self.diverged_step = torch.full((K,), -1, dtype=torch.long)
        self.over = torch.zeros(K, dtype=torch.long, device=self.device)  # consecutive steps above ℓ0 + margin
        self.l0: torch.Tensor | None = None
        self.log = MetricsLog(K)
        self.next_step = 0
        self.seconds = 0.0  # wall time spent training this group, summed over resumes
        self.tokens_per_step = K * cfg.data.batch_size * cfg.data.seq_len

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"config": json.dumps(_config_json(self.cfg)), "flat": self.fp.flat,
                "opt": self.opt.state_dict(), "active": self.active, "diverged_step": self.diverged_step,
                "over": self.over, "l0": self.l0, "log": self.log.state(), "next_step": self.next_step,
                "seconds": self.seconds + time.perf_counter() - self._started}

    def restore(self, state: dict[str, Any]) -> None:
        if not _same_run(json.loads(state["config"]), _config_json(self.cfg)):
            raise ConfigError(f"--out {self.out}: its checkpoint belongs to a different config; "
                              "rerun with the original config or choose another --out")
        self.fp.flat.copy_(state["flat"])
        self.opt.load_state_dict(state["opt"])
        self.active, self.over, self.l0 = state["active"], state["over"], state["l0"]
        self.diverged_step = state["diverged_step"]
        self.log.load_state(state["log"])
        self.next_step = int(state["next_step"])
        self.seconds = float(state.get("seconds", 0.0))
        self.log.truncate(self.next_step)

    # -- one step ----------------------------------------------------------------------------------------------
    def step(self, s: int) -> dict[str, torch.Tensor] | None:
        t = self.cfg.train
        logged = s % t.log_every == 0 or s == t.steps - 1
        x, y = self.batches.train(s)
        rec = Recorder() if logged else None
        with autocast(self.device, self.precision):
            logits = self.model.forward(self.params, x, rec)
        parts = loss_parts(logits, y, diagnostics=logged)
        loss = total_loss(parts, self.z_coef)
        grads = dict(zip(self.params, torch.autograd.grad(loss, list(self.params.values()))))
        finite = torch.isfinite(parts.ce.detach()) & torch.isfinite(parts.z_sq.detach())
        stats = self.opt.step(grads, self.active & finite, want_stats=logged)
        # A NaN/Inf loss or gradient freezes a member at once; a loss above ℓ0 + margin for a window does too.
        ok = stats.pop("applied")
        assert self.l0 is not None
        high = parts.ce.detach() > self.l0 + t.divergence_margin
        self.over = torch.where(high, self.over + 1, torch.zeros_like(self.over))
        newly = self.active & (~ok | (self.over >= t.divergence_window))
        if bool(newly.any()):
            self.diverged_step[newly.cpu()] = s
            self.active = self.active & ~newly
        if not logged:
            return None
        cols = step_columns(parts, self.z_coef, rec, stats)
        cols["diverged"] = (~self.active).float()
        return cols

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self, on_step: Callable[[int], None] | None = None, progress: Any = None) -> dict[str, Any]:
        t = self.cfg.train
        if self.l0 is None:
            self.l0 = evaluate(self.model, self.params, self.batches, self.device, self.precision)
        task = progress.add_task("train", total=t.steps, completed=self.next_step, tps=0.0, logit=0.0) if progress else None
        last_time, last_step = time.perf_counter(), self.next_step
        for s in range(self.next_step, t.steps):
            if s % t.eval_every == 0:
                ev = self.l0 if s == 0 else evaluate(self.model, self.params, self.batches, self.device, self.precision)
                self.log.add(s, {"eval_loss": ev})
                last_time = time.perf_counter()  # evaluation time is not training throughput
            cols = self.step(s)
            if cols is not None:
                now = time.perf_counter()
                tps = self.tokens_per_step * (s + 1 - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, s + 1
                cols["tokens_per_s"] = torch.tensor(tps)
                self.log.add(s, cols)
                if progress:
                    worst = max((float(v.max()) for k, v in cols.items() if k.startswith("attn_logit_max/")), default=0.0)
                    progress.update(task, completed=s + 1, tps=tps, logit=worst)
            self.next_step = s + 1
            if self.next_step % t.checkpoint_every == 0 and self.next_step < t.steps:
                store.save_checkpoint(self.out, self.state())
            if on_step is not None:
                on_step(s)
        final = evaluate(self.model, self.params, self.batches, self.device, self.precision)
        self.log.add(t.steps, {"eval_loss": final})
        if progress:
            progress.update(task, completed=t.steps)
        return self.summary(final)

    def summary(self, final: torch.Tensor) -> dict[str, Any]:
        assert self.l0 is not None
        l0, fin = self.l0.tolist(), final.tolist()
        frame = self.log.frame()
        tps = frame["tokens_per_s"].drop_nulls()
        members = []
        for i, m in enumerate(self.members):
            ds = int(self.diverged_step[i])
            members.append({"member": i, **dataclasses.asdict(m), "l0": l0[i], "final_eval_loss": finite_or_none(fin[i]),
                             "diverged": ds >= 0, "diverged_step": ds if ds >= 0 else None})
        return {"n_params": self.n_params, "vocab_size": self.vocab_size, "steps": self.cfg.train.steps,
                "precision": self.precision, "seconds": round(self.seconds + time.perf_counter() - self._started, 2),
                "members": members, "tokens_per_s": float(tps.median()) if len(tps) else None,
                "lr_sensitivity": sensitivity_table(self.members, fin, l0)}


def train_group(cfg: GroupConfig, out: str | Path, *, on_step: Callable[[int], None] | None = None,
                progress: Any = None, data: TokenData | None = None) -> tuple[dict[str, Any], bool]:
    """Train one group into ``out``; returns (summary, trained_now). A finished ``out`` is left untouched."""
    out = Path(out)
    if store.is_done(out):
        if not _same_run(store.read_json(out / "config.json"), _config_json(cfg)):
            raise ConfigError(f"--out {out}: holds a finished run of a different config; choose another --out")
        return store.read_json(out / "summary.json"), False
    run = GroupRun(cfg, out, data)  # loads the data first: a bad corpus fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    state = store.load_checkpoint(out, run.device)
    if state is not None:
        run.restore(state)
    store.write_json(out / "config.json", _config_json(cfg))
    summary = run.run(on_step=on_step, progress=progress)
    store.write_parquet(out / "metrics.parquet", run.log.frame())
    store.write_json(out / "summary.json", summary)
    store.write_atomic(out / store.DONE, b"")
    store.clear_checkpoint(out)
    return summary, True


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: a non-finite loss is written as null (and read back as NaN by the analysis)."""
    return x if math.isfinite(x) else None
