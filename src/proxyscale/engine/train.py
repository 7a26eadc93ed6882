"""The loop for one group: K members trained as one batched model on the same batches."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import loggers, threads
from ..core import store, table
from ..core.analysis import lr_sensitivity, lr_sensitivity_coupled
from .callbacks import Callback, Callbacks, Progress
from ..core.config import MEMBER_SCALARS, ConfigError, GroupConfig, Member
from .data import Batches, TokenData, load_data
from .device import (
    StepWeights,
    activation_bytes_per_sequence,
    compile_fn,
    compute_dtype,
    is_out_of_memory,
    plan_micro_batch,
    resolve_compile,
    resolve_device,
    resolve_precision,
    rows_chunk,
    state_bytes,
)
from .diagnostics import MetricsLog, log_bytes, logged_columns
from .losses import loss_parts, total_loss
from .model import Caps, ProxyGPT, count_params, depth_eps_mult, init_params, param_specs
from .optim import BatchedAdamW, FlatParams, mu_center, mu_norm, param_order, qk_clip
from ..core.records import GroupSummary


@torch.no_grad()
def evaluate(run: GroupRun) -> torch.Tensor:
    """Validation cross-entropy per member [K] (z-loss excluded, paper §3), over the fixed eval windows; every
    member is evaluated, frozen ones included."""
    weights = run.weights.refresh(None)
    total = None
    for x, y in run.batches.eval:
        ce = run.loss_fn(weights, x, y, run.z_coef, False)[1]
        total = ce if total is None else total + ce
    return total / len(run.batches.eval)


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


def _combine(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-member diagnostics of equal micro-batches -> those of the whole batch: maxima stay maxima, RMS
    combine as the root of the mean square, everything else (means) as means."""
    if len(chunks) == 1:
        return chunks[0]
    out = {}
    for name in chunks[0]:
        stacked = torch.stack([c[name] for c in chunks])
        if name.startswith("attn_logit_max"):
            out[name] = stacked.amax(0)
        elif name.startswith("block_rms"):
            out[name] = stacked.square().mean(0).sqrt()
        else:
            out[name] = stacked.mean(0)
    return out


class GroupRun:
    """State of one group's training; ``run()`` trains to the end, checkpointing and resuming in ``out``."""

    def __init__(self, cfg: GroupConfig, out: Path, data: TokenData | None = None, thread_cap: int | None = None,
                 thread_max: int | None = None) -> None:
        self._started = time.perf_counter()  # setup (data, init) counts towards the group's seconds
        self.cfg, self.out = cfg, Path(out)
        t = cfg.train
        self.device = resolve_device(t.device)
        self.precision = resolve_precision(t.precision, self.device, cfg.model.width,
                                           cfg.data.batch_size * cfg.data.seq_len)
        self.compiled = resolve_compile(t.compile, self.device)
        self.log_every = log_every(t, self.device)
        self.rebalancer: threads.Rebalancer | None = None
        if t.threads > 0:  # the user's count is kept as given
            torch.set_num_threads(t.threads)
        elif self.device.type == "cpu":  # auto: no more threads than the cores free now, re-checked while training
            cap = thread_cap or threads.usable_cores()  # its share to start with; up to thread_max once cores free
            start = threads.choose(cap, threads.free_cores())
            torch.set_num_threads(start)
            self.rebalancer = threads.Rebalancer(max(cap, thread_max or 0), torch.set_num_threads, start)
        elif thread_cap:
            torch.set_num_threads(thread_cap)
        self.members = cfg.member_list()
        K = len(self.members)
        loggers.check(t.log_to)  # a logger that is not installed fails here, before anything is written
        self.data = data if data is not None else load_data(cfg.data, cfg.model.vocab)
        self.vocab_size = self.data.vocab_size
        self.specs = param_specs(cfg.model, self.vocab_size)
        self.n_params = count_params(cfg.model, self.vocab_size)
        dtype = compute_dtype(self.precision)
        # refused here, before anything is written, when not even one sequence per member fits
        self.micro_batch, self.memory_estimate = memory_plan(cfg, self.device, self.precision, self.vocab_size)
        self.model = ProxyGPT(cfg.model, self.vocab_size, cfg.data.seq_len, self.device,
                              checkpoint_blocks=t.activation_checkpointing)
        self.batches = Batches(self.data, cfg.data, t.seed, self.device)
        init = init_params(cfg.model, self.vocab_size, [m.seed for m in self.members])
        # float32 master weights [K, P], in the optimizer's order (``optim.param_order``)
        self.fp = FlatParams({n: init[n].to(self.device) for n in param_order(self.specs, cfg.optim)})
        self.weights = StepWeights(self.fp, dtype)
        self.opt = BatchedAdamW(self.fp, self.specs, self.members, cfg.optim, t.steps, compile=self.compiled,
                                eps_mult=depth_eps_mult(cfg.model))
        self.caps = _caps(self.members, self.device)  # the post-paper soft-caps and QK-clip (None: none on)
        self.qk_tau = torch.tensor([m.qk_clip or 0.0 for m in self.members], device=self.device)
        self.loss_fn = compile_fn(self._loss, self.compiled)
        self.chunk = rows_chunk(self.device, K, self.vocab_size)
        self.z_coef = torch.tensor([m.z_loss for m in self.members], device=self.device)
        # Output Embedding Centering (optim.mu_loss, optim.mu_centering): None where no member has it, so a group
        # without it runs today's code path, bit for bit
        self.mu_coef = (torch.tensor([m.mu_loss for m in self.members], device=self.device)
                        if any(m.mu_loss > 0 for m in self.members) else None)
        self.mu_on = (torch.tensor([m.mu_centering for m in self.members], device=self.device)
                      if any(m.mu_centering for m in self.members) else None)
        self.active = torch.ones(K, dtype=torch.bool, device=self.device)
        self.rows: torch.Tensor | None = None  # the live members computed each step (None = all)
        self.diverged_step = torch.full((K,), -1, dtype=torch.long, device=self.device)
        self.over = torch.zeros(K, dtype=torch.long, device=self.device)  # consecutive steps above ℓ0 + margin
        self.l0: torch.Tensor | None = None  # ``start()``
        self.callbacks = Callbacks()  # ``run()``'s
        self.last: dict[str, torch.Tensor] = {}  # last logged value per column [K]: what a frozen member shows
        self.log = MetricsLog(K)
        self.next_step = 0
        self.seconds = 0.0  # wall time spent training this group, summed over resumes
        self.tokens_per_step = K * cfg.data.batch_size * cfg.data.seq_len

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"config": json.dumps(table.identity(self.cfg)), "flat": self.fp.flat,
                "opt": self.opt.state_dict(), "active": self.active, "diverged_step": self.diverged_step,
                "over": self.over, "l0": self.l0, "log": self.log.state(), "next_step": self.next_step,
                "last": self.last, "rows": self.rows, "seconds": self.seconds + time.perf_counter() - self._started}

    def restore(self, state: dict[str, Any]) -> None:
        if not table.same_run(json.loads(state["config"]), self.cfg):
            raise ConfigError(f"--out {self.out}: its checkpoint belongs to a different config; "
                              "rerun with the original config or choose another --out")
        self.fp.flat.copy_(state["flat"])
        self.opt.load_state_dict(state["opt"])
        self.active, self.over, self.l0 = state["active"], state["over"], state["l0"]
        self.diverged_step = state["diverged_step"]
        self.log.load_state(state["log"])
        self.next_step = int(state["next_step"])
        self.seconds = float(state.get("seconds", 0.0))
        self.last, self.rows = state.get("last", {}), state.get("rows")
        self.log.truncate(self.next_step)

    # -- one step ----------------------------------------------------------------------------------------------
    def _loss(self, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, z_coef: torch.Tensor,
              record: bool, caps: Caps | None = None, mu_coef: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Forward and loss of one (micro-)batch: (objective, ce, z_sq, log_z, logit_mean, layer stats or None).
        The unit that ``train.compile`` compiles. ``mu_coef`` [K]: μ-loss λ·‖μ‖² per member (None: off)."""
        logits, stats = self.model.forward(weights, x, record, caps)
        parts = loss_parts(logits, y, diagnostics=record, chunk=self.chunk)
        objective = total_loss(parts, z_coef)
        if mu_coef is not None:  # μ = the mean output-embedding row, in float32 (OEC's nanoGPT/model.py)
            out, axis = (weights["unembed"], -1) if "unembed" in weights else (weights["embed"], 1)
            objective = objective + (mu_coef * out.float().mean(dim=axis).square().sum(-1)).sum()
        return objective, parts.ce, parts.z_sq, parts.log_z, parts.logit_mean, stats

    def _full(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A per-member value of the live rows -> [K]: members not computed repeat their last logged value."""
        if self.rows is None:
            return value
        full = self.last[name].clone() if name in self.last else torch.full(
            (len(self.members),), float("nan"), device=value.device, dtype=value.dtype)
        return full.index_copy_(0, self.rows, value)

    def step(self, s: int) -> dict[str, torch.Tensor] | None:
        """One optimizer step at step ``s``. Nothing waits for the device except on logged steps, where the
        caller copies the returned columns to the host at once."""
        t = self.cfg.train
        logged = s % self.log_every == 0 or s == t.steps - 1
        x, y = self.batches.train(s)
        rows = self.rows
        if rows is not None and len(rows) == 0:  # every member frozen: nothing left to compute
            return {**self.last, "diverged": (~self.active).float()} if logged else None
        weights = self.weights.refresh(rows)
        leaves = [weights[n] for n in self.fp.names]
        z_coef = self.z_coef if rows is None else self.z_coef[rows]
        mu_coef = self.mu_coef if self.mu_coef is None or rows is None else self.mu_coef[rows]
        caps = None if self.caps is None else self.caps.rows(rows)
        mb = self.micro_batch
        n_chunks = x.shape[0] // mb
        parts: list[dict[str, torch.Tensor]] = []
        head_max = []  # QK-clip's per-head max logits of each micro-batch [L, K, H]
        for c in range(n_chunks):
            xc, yc = x[c * mb:(c + 1) * mb], y[c * mb:(c + 1) * mb]
            loss, ce, z_sq, log_z, logit_mean, stats = self.loss_fn(weights, xc, yc, z_coef, logged, caps, mu_coef)
            grads = torch.autograd.grad(loss / n_chunks if n_chunks > 1 else loss, leaves, allow_unused=True)
            self.weights.grad_into(grads, self.opt.g, accumulate=c > 0)
            if stats is not None and "attn_logit_max_head" in stats:
                head_max.append(stats.pop("attn_logit_max_head"))
            chunk = {"loss": ce.detach(), "z_sq": z_sq.detach(), "log_z_mean": log_z}
            if logged:
                chunk["output_logit_mean"] = logit_mean
                for name, per_layer in stats.items():
                    chunk.update({f"{name}/{i}": v for i, v in enumerate(per_layer)})
            parts.append(chunk)
        measured = {name: self._full(name, v) for name, v in _combine(parts).items()}
        ce, z_sq = measured["loss"], measured.pop("z_sq")
        finite = torch.isfinite(ce) & torch.isfinite(z_sq)
        stats = self.opt.step(self.opt.g, self.active & finite, want_stats=logged)
        if head_max:  # QK-clip, right after the optimizer step, from this step's batch (Kimi K2; Megatron-LM)
            stats.update(self._qk_clip(torch.stack(head_max).amax(dim=0), rows, stats["applied"]))
        if self.mu_on is not None:  # μ-centering, right after the step, on the members that updated (OEC)
            mu_center(self.fp, self.mu_on & stats["applied"])
        # A NaN/Inf loss or gradient freezes a member at once; a loss above ℓ0 + margin for a window does too.
        ok = stats.pop("applied")
        assert self.l0 is not None
        high = ce > self.l0 + t.divergence_margin
        self.over = (self.over + 1) * high  # consecutive steps above ℓ0 + margin
        newly = self.active & (~ok | (self.over >= t.divergence_window))
        self.diverged_step = torch.where(newly, s, self.diverged_step)
        self.active = self.active & ~newly
        if not logged:
            return None
        cols = {"loss": ce, "z_loss": self.z_coef * z_sq, **measured, "mu_norm": mu_norm(self.fp)}
        for name, value in stats.items():  # members not computed show their last measurement, as above
            cols[name] = value if name in ("lr", "lr_integral") or rows is None else self._full(name, value[rows])
        self.last = dict(cols)
        cols["diverged"] = (~self.active).float()
        return cols

    def _qk_clip(self, head_max: torch.Tensor, rows: torch.Tensor | None,
                 applied: torch.Tensor) -> dict[str, torch.Tensor]:
        """Clip the heads of the members that updated this step (``optim.qk_clip``); ``head_max`` [L, K_live, H].
        Returns the heads clipped this step per member, ``qk_clip_heads`` [K] (of L·H)."""
        if rows is not None:  # the members not computed this step: nothing to clip
            full = torch.zeros(head_max.shape[0], len(self.members), head_max.shape[2], device=head_max.device)
            head_max = full.index_copy_(1, rows, head_max.float())
        tau = torch.where(applied, self.qk_tau, torch.zeros_like(self.qk_tau))
        return {"qk_clip_heads": qk_clip(self.fp, head_max.float(), tau, self.cfg.optim.qk_clip_alpha,
                                         self.cfg.model.heads)}

    def _update_rows(self, diverged: Any) -> None:
        """After a logged step: stop computing members that have diverged (a host decision, made only where the
        host already holds the step's numbers)."""
        live = [i for i, d in enumerate(diverged) if d == 0]
        if len(live) < len(self.members) and (self.rows is None or len(live) < len(self.rows)):
            self.rows = torch.tensor(live, dtype=torch.long, device=self.device)

    # -- the loop ----------------------------------------------------------------------------------------------
    def start(self, l0: float | None = None) -> None:
        """ℓ0, the loss at initialisation each member's divergence and LR sensitivity are measured against (paper
        §3): evaluated, unless a resumed checkpoint holds it or ``l0`` is given (a cost probe or a benchmark, which
        need no divergence check, pass a stand-in instead of paying for an evaluation)."""
        if l0 is not None:
            self.l0 = torch.full((len(self.members),), float(l0), device=self.device)
        elif self.l0 is None:
            self.l0 = evaluate(self)

    def _record(self, step: int, cols: dict[str, Any]) -> dict[str, Any]:
        """One row of the metrics log (the step's one device-to-host copy), shown to the callbacks."""
        host = self.log.add(step, cols)
        self.callbacks.on_logged(step, host)
        return host

    def run(self, callbacks: Sequence[Callback] = ()) -> GroupSummary:
        """Train to ``train.steps`` (from ``next_step``), calling ``callbacks`` (``callbacks`` module) as it goes;
        returns the summary. Calls ``start()`` first when the caller has not."""
        t = self.cfg.train
        self.start()
        self.callbacks = Callbacks(callbacks)
        self.callbacks.on_start(self)
        last_time, last_step = time.perf_counter(), self.next_step
        s = self.next_step
        while s < t.steps:
            if s % t.eval_every == 0:
                ev = self.l0 if s == 0 else evaluate(self)
                self._record(s, {"eval_loss": ev})
                last_time = time.perf_counter()  # evaluation time is not training throughput
            try:
                cols = self.step(s)
            except RuntimeError as err:  # auto micro-batching: a step that does not fit retries with half
                if not (is_out_of_memory(err) and t.micro_batch_size == 0 and self.micro_batch > 1):
                    raise
                self.micro_batch = _halve(self.micro_batch, self.cfg.data.batch_size)
                torch.cuda.empty_cache()
                continue
            if cols is not None:
                host = self.log.add(s, cols)  # the step's one device-to-host copy
                now = time.perf_counter()
                tps = self.tokens_per_step * (s + 1 - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, s + 1
                self.log.add(s, {"tokens_per_s": tps})
                self.callbacks.on_logged(s, {**host, "tokens_per_s": np.full(len(self.members), tps)})
                self._update_rows(host["diverged"])
            self.next_step = s = s + 1
            if self.rebalancer is not None:
                self.rebalancer.tick()
            if self.next_step % t.checkpoint_every == 0 and self.next_step < t.steps:
                store.save_checkpoint(self.out, self.state())
            self.callbacks.on_step_end(s - 1)
        final = evaluate(self)
        self._record(t.steps, {"eval_loss": final})
        summary = self.summary(final)
        self.callbacks.on_finish(summary)
        return summary

    def summary(self, final: torch.Tensor) -> GroupSummary:
        assert self.l0 is not None
        l0, fin = self.l0.tolist(), final.tolist()
        frame = self.log.frame()
        tps = frame["tokens_per_s"].drop_nulls()
        members = []
        for i, m in enumerate(self.members):
            ds = int(self.diverged_step[i])
            members.append({"member": i, **dataclasses.asdict(m), "l0": l0[i], "final_eval_loss": finite_or_none(fin[i]),
                             "diverged": ds >= 0, "diverged_step": ds if ds >= 0 else None})
        return GroupSummary(
            n_params=self.n_params, vocab_size=self.vocab_size, steps=self.cfg.train.steps, precision=self.precision,
            compiled=self.compiled, micro_batch_size=self.micro_batch, device=str(self.device),
            threads=torch.get_num_threads() if self.device.type == "cpu" else None,
            seconds=round(self.seconds + time.perf_counter() - self._started, 2), members=members,
            tokens_per_s=float(tps.median()) if len(tps) else None,
            lr_sensitivity=sensitivity_table(self.members, fin, l0))


def log_every(t: Any, device: torch.device) -> int:
    """Steps between logged rows: ``train.log_every``, or auto (0): every step on a CPU, every 10th on a GPU, where
    a logged step's device-to-host copy costs more than the step."""
    return t.log_every or (10 if device.type == "cuda" else 1)


def memory_plan(cfg: GroupConfig, device: torch.device | None = None, precision: str | None = None,
                vocab_size: int | None = None) -> tuple[int, int]:
    """(sequences per member computed at once, the group's estimated bytes) on ``device`` (default: the config's),
    or a ConfigError naming the field that makes the group too big for it (``device.plan_micro_batch``). Costs no
    allocation: ``proxyscale train`` asks it before it prints anything."""
    from .data import vocab_size as of_vocab

    t = cfg.train
    device = device or resolve_device(t.device)
    precision = precision or resolve_precision(t.precision, device, cfg.model.width,
                                               cfg.data.batch_size * cfg.data.seq_len)
    vocab_size = vocab_size or of_vocab(cfg.model.vocab)
    specs = param_specs(cfg.model, vocab_size)
    dtype = compute_dtype(precision)
    k = len(cfg.member_list())
    n_total = sum(math.prod(spec.shape) for spec in specs.values())
    per_seq = activation_bytes_per_sequence(cfg.model.width, cfg.model.depth, cfg.data.seq_len, vocab_size, dtype,
                                            t.activation_checkpointing)
    logged = t.steps // log_every(t, device) + t.steps // max(1, t.eval_every) + 2
    host_log = log_bytes(k, logged, logged_columns(cfg.model.depth, len(specs)))
    micro = plan_micro_batch(t.micro_batch_size, cfg.data.batch_size, k, n_total, per_seq, device, dtype,
                             host_log=host_log)
    return micro, state_bytes(k, n_total, dtype) + k * micro * per_seq


def _caps(members: list[Member], device: torch.device) -> Caps | None:
    """The members' soft-caps [K] (0 = none) and whether QK-clip needs per-head maxima; None when no member has any,
    so the fused attention and today's numbers stay."""
    def column(name: str) -> torch.Tensor | None:
        values = [getattr(m, name) for m in members]
        return None if all(v is None for v in values) else torch.tensor([v or 0.0 for v in values], device=device)

    attn, final = column("attn_softcap"), column("final_softcap")
    head_max = any(m.qk_clip is not None for m in members)
    return None if attn is None and final is None and not head_max else Caps(attn, final, head_max)


def _halve(micro_batch: int, batch: int) -> int:
    """The largest divisor of ``batch`` at most half of ``micro_batch``."""
    return max(d for d in range(1, micro_batch // 2 + 1) if batch % d == 0)


def train_group(cfg: GroupConfig, out: str | Path, *, callbacks: Sequence[Callback] = (),
                progress: Any = None, data: TokenData | None = None, wait: bool = False,
                thread_cap: int | None = None, thread_max: int | None = None) -> tuple[GroupSummary, bool]:
    """Train one group into ``out``; returns (summary, trained_now). A finished ``out`` is left untouched.
    ``callbacks`` watch it train (``callbacks``), after the progress (``progress``: a rich Progress or
    ``progress.Lines``) and the loggers of ``train.log_to``.

    ``out`` has one writer at a time (``store.lock``): a second one waits (``wait``, as sweep workers do: the
    group is then usually finished) or exits with a message naming the holder. Nothing is written before the
    config and data have been checked. ``thread_cap``: the cores this group may use when ``train.threads`` is 0
    (auto; a sweep gives each worker its share), of which it takes those free (``threads.choose``);
    ``thread_max``: how many it may grow to while training when cores free up (the last groups of a sweep)."""
    out = Path(out)
    store.check_dir(out)
    if store.finished(out):
        return _finished_summary(out, cfg), False
    run = GroupRun(cfg, out, data, thread_cap, thread_max)  # loads the data first: a bad corpus fails before anything is written
    with store.lock(out, wait=wait):
        if store.finished(out):  # another writer finished it while we waited
            return _finished_summary(out, cfg), False
        state = store.load_checkpoint(out, run.device)
        if state is not None:
            run.restore(state)
        with loggers.open_loggers(cfg, out, table.run_id(cfg), run.next_step) as logged:
            try:
                summary = run.run([*([Progress(progress)] if progress else []), logged, *callbacks])
            except RuntimeError as err:  # what auto micro-batching could not absorb: one line, not a traceback
                if not is_out_of_memory(err):
                    raise
                raise ConfigError(
                    f"train: a group of {len(run.members)} members ran out of memory on {run.device} at micro-batch "
                    f"{run.micro_batch} (estimated {run.memory_estimate / 2**30:.1f} GiB); train fewer members per "
                    "group (split members.lr), a smaller model or batch, or set train.activation_checkpointing: "
                    "true; a rerun resumes from the last checkpoint") from None
        store.finish(out, table.run_id(cfg), cfg.to_dict(), run.log.frame(), summary.to_json())
        store.clear_checkpoint(out)
    return summary, True


def _finished_summary(out: Path, cfg: GroupConfig) -> GroupSummary:
    if not table.same_run(store.read_json(out / "config.json"), cfg):
        raise ConfigError(f"--out {out}: holds a finished run of a different config; choose another --out")
    return GroupSummary.read(out / "summary.json")


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: a non-finite loss is written as null (and read back as NaN by the analysis)."""
    return x if math.isfinite(x) else None
