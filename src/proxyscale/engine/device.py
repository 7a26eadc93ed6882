"""The device seam: every choice that depends on the hardware lives here, so ``model.py`` reads like the paper.

- which device and precision run (``resolve_device``, ``resolve_precision``);
- mixed precision done once per step (``StepWeights``): the float32 master buffer ``flat [K, P]`` is cast to
  bf16 once per step and the model computes with views of that copy, instead of autocast re-casting every
  weight at every use; the gradients come back as one float32 ``[K, P]``;
- compilation (``compile_fn``): ``torch.compile`` where it pays (CUDA by default);
- memory (``free_bytes``, ``plan_micro_batch``): how many sequences per member fit at once;
- chunk sizes of the few loops that must not materialise a big tensor whole (``logit_chunk``, ``rows_chunk``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from ..core.config import ConfigError


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


# On a CPU with native bf16 (AVX512-BF16/AMX), bf16 only pays once the matmuls are big enough to hide the casts
# and bf16's slower elementwise kernels. Measured here (2 cores, AVX512-BF16 + AMX, one thread, torch 2.13, a K=7
# group, ms per logged step fp32 / bf16): d32-L1 T64 B8 19.5 / 29.0; d64-L2 T64 B8 81.6 / 114; d96-L3 T64 B8
# 176 / 262; d128-L4 T64 B8 408 / 432; d128-L4 T128 B32 2,946 / 2,570; d256-L4 T64 B8 1,076 / 1,026; d256-L4
# T128 B32 8,103 / 6,275. So bf16 from width 256, or width 128 with at least 2,048 tokens per batch.
CPU_BF16_MIN_WIDTH = 256
CPU_BF16_MIN_WIDTH_LARGE_BATCH = (128, 2048)  # (width, tokens per batch) from which bf16 is faster too


def resolve_precision(precision: str, device: torch.device, width: int | None = None,
                      batch_tokens: int | None = None) -> str:
    """``auto`` -> bf16 where the device computes it natively and it is faster at the group's shapes (``width``,
    ``batch_tokens`` = B·T; unknown shapes count as large), else fp32 (see TrainConfig.precision)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if not cpu_has_native_bf16():
        return "fp32"
    if width is None:
        return "bf16"
    w_large, t_large = CPU_BF16_MIN_WIDTH_LARGE_BATCH
    large = width >= CPU_BF16_MIN_WIDTH or (width >= w_large and (batch_tokens or 0) >= t_large)
    return "bf16" if large else "fp32"


def compute_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def resolve_compile(setting: str, device: torch.device) -> bool:
    """``auto`` compiles on CUDA only: on a CPU the compile time (tens of seconds) outweighs the gain at micro
    scale, and the eager step is already close to a plain loop there (benchmarks/throughput.py)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def compile_fn(fn: Callable, enabled: bool) -> Callable:
    """``torch.compile(fn)`` when enabled, else ``fn``. ``dynamic=None``: a shape that changes (fewer live
    members after a divergence, a last micro-batch) recompiles once, then is treated as dynamic."""
    if not enabled:
        return fn
    import torch._dynamo.config as dynamo_config

    # every group of a sweep compiles its own graphs in one process: lift dynamo's recompile limits (default 8),
    # past which it would fall back to eager without a word
    for name, value in (("cache_size_limit", 1024), ("recompile_limit", 1024), ("accumulated_cache_size_limit", 1 << 14),
                        ("accumulated_recompile_limit", 1 << 14)):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), value))
    return torch.compile(fn, dynamic=None)


# -- chunk sizes ---------------------------------------------------------------------------------------------
def logit_chunk(device: torch.device, per_sequence: int) -> int:
    """Sequences per chunk of the max-attention-logit pass: on a CPU ~1M floats (cache-sized), on a GPU ~256M
    floats (1 GiB) so the pass is a few large matmuls."""
    budget = (1 << 20) if device.type == "cpu" else (1 << 28)
    return max(1, budget // per_sequence)


def rows_chunk(device: torch.device, members: int, vocab: int) -> int:
    """Tokens per chunk of the float32 log-sum-exp over ``[K, N, V]``: ~16M floats on a GPU, ~4M on a CPU, so
    the float32 copy of the logits never exists whole."""
    budget = (1 << 22) if device.type == "cpu" else (1 << 24)
    return max(1, budget // (members * vocab))


# -- mixed precision, once per step --------------------------------------------------------------------------
class StepWeights:
    """The weights a step computes with, made once per step from the float32 master buffer ``fp.flat [K, P]``.

    ``refresh(rows)`` returns leaf tensors ``{name: [K', *shape]}`` for the members ``rows`` (all when None):
    in float32 they are views of the master buffer itself (no copy); in bf16 they are views of one bf16 copy
    made by a single cast. Tensors named in ``keep_fp32`` (the embedding: only its looked-up rows are cast, by
    the model) stay float32 views. ``grad_into(grads, g, accumulate)`` writes their gradients into the float32
    ``g [K, P]`` in the buffer's layout (rows of members not computed are zero).
    """

    def __init__(self, fp: Any, dtype: torch.dtype, keep_fp32: tuple[str, ...] = ("embed",)) -> None:
        self.fp, self.dtype = fp, dtype
        self.keep_fp32 = keep_fp32 if dtype != fp.flat.dtype else ()
        self.rows: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None  # [K', P] in the compute dtype
        self._leaves: dict[str, torch.Tensor] = {}

    def refresh(self, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        fp = self.fp
        self.rows = rows
        if rows is None and self.dtype == fp.flat.dtype:
            return fp.params  # float32, every member: the master views themselves, no copy
        k = fp.flat.shape[0] if rows is None else len(rows)
        with torch.no_grad():
            if self._buf is None or self._buf.shape[0] != k:
                self._buf = torch.empty(k, fp.flat.shape[1], dtype=self.dtype, device=fp.flat.device)
                self._leaves = {n: self._buf[:, fp.slices[n]].view(k, *fp.shapes[n]).detach().requires_grad_(True)
                                for n in fp.names}
            self._buf.copy_(fp.flat if rows is None else fp.flat.index_select(0, rows))  # the one cast of the step
            leaves = dict(self._leaves)
            for n in self.keep_fp32:  # float32 views of the master (or of the live members' rows)
                leaves[n] = fp.params[n] if rows is None else \
                    fp.flat[:, fp.slices[n]].index_select(0, rows).view(k, *fp.shapes[n]).requires_grad_(True)
        return leaves

    @torch.no_grad()
    def grad_into(self, grads: tuple[torch.Tensor | None, ...], g: torch.Tensor, accumulate: bool) -> None:
        """grads, in ``fp.names`` order (None = no gradient) -> float32 ``g [K, P]``, as one concatenation (one
        kernel, casting bf16 to float32 on the way); adds to ``g`` when ``accumulate`` (micro-batches)."""
        fp, rows = self.fp, self.rows
        k = g.shape[0] if rows is None else len(rows)
        parts = [torch.zeros(k, fp.slices[n].stop - fp.slices[n].start, device=g.device) if grad is None
                 else grad.reshape(k, -1) for n, grad in zip(fp.names, grads)]
        if rows is None:
            if accumulate:
                g.add_(torch.cat(parts, dim=1))
            else:
                torch.cat(parts, dim=1, out=g)
            return
        live = torch.cat(parts, dim=1).float()
        if accumulate:
            live += g.index_select(0, rows)
        g.zero_()
        g.index_copy_(0, rows, live)


# -- memory --------------------------------------------------------------------------------------------------
def free_bytes(device: torch.device) -> int:
    """Memory available to a new group: free GPU memory, or MemAvailable of the host for a CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def state_bytes(members: int, n_total: int, dtype: torch.dtype) -> int:
    """Bytes of a group's state: float32 master weights, Adam m and v, gradient and scratch (5 × 4 bytes per
    parameter and member) plus the compute copy of the weights (2 bytes in bf16)."""
    return members * n_total * (20 + (2 if dtype == torch.bfloat16 else 0))


def activation_bytes_per_sequence(width: int, depth: int, seq_len: int, vocab: int, dtype: torch.dtype,
                                  checkpointing: bool = False) -> int:
    """Bytes one sequence of one member keeps alive between forward and backward (an estimate, rounded up):
    per layer and token ~24 width-sized activations (norm inputs/outputs, q, k, v before and after
    qk-layernorm and RoPE, attention output, the 4·d MLP hidden twice), the logits and their gradient in the
    compute dtype, and a float32 chunk of the log-sum-exp."""
    b = 2 if dtype == torch.bfloat16 else 4
    # with activation checkpointing a block keeps only its input, and one block's activations live at a time
    blocks = (depth + 24) * width * b if checkpointing else depth * 24 * width * b
    return seq_len * (blocks + 2 * vocab * b + 8 * vocab)


BLAME = {  # what each part of a group's memory is made of: the fields a user changes to shrink it
    "state": "the weights and optimizer state (model.width, model.depth, model.vocab) of every member",
    "log": "the metrics log (train.steps / train.log_every logged rows of every member)",
    "sequence": "one sequence's activations per member (data.seq_len, model.width, model.depth, model.vocab)",
}
ADVICE = {
    "state": "a smaller model.width or model.depth, or fewer members per group (split members.lr)",
    "log": "fewer train.steps or a larger train.log_every",
    "sequence": "a shorter data.seq_len, a smaller model, or train.activation_checkpointing: true",
}


def plan_micro_batch(requested: int, batch: int, members: int, n_total: int, per_sequence: int,
                     device: torch.device, dtype: torch.dtype, free: int | None = None, host_log: int = 0) -> int:
    """Sequences per member computed at once: ``requested`` when > 0 (must divide the batch), else the largest
    divisor of the batch whose activations fit in 80% of the free memory left after the group's state.
    Refuses, with the numbers, a group that cannot fit even one sequence per member, naming the part that is
    largest and the fields that make it so (``BLAME``). ``host_log``: the bytes the metrics log grows to in host
    memory (``diagnostics.log_bytes``), which on a CPU shares the memory with the state and activations; a group
    whose state and log alone do not fit is refused also at a requested size."""
    if requested > 0 and batch % requested:
        raise ConfigError(f"train.micro_batch_size: {requested} does not divide data.batch_size {batch}; "
                          f"pick one of {[d for d in range(1, batch + 1) if batch % d == 0]}")
    free = free_bytes(device) if free is None else free
    state = state_bytes(members, n_total, dtype)
    log = host_log if device.type == "cpu" else 0
    room = int(0.8 * free) - state - log
    fits = room // max(1, members * per_sequence)
    if fits < 1:
        parts = {"state": state, "log": log, "sequence": members * per_sequence}
        largest = max(parts, key=parts.__getitem__)
        held = f"state {state / 2**30:.1f} GiB" + (f" + metrics log {log / 2**30:.1f} GiB" if log else "")
        raise ConfigError(
            f"train: a group of {members} member{'s' if members > 1 else ''} does not fit on {device}: {held} + one "
            f"sequence per member {members * per_sequence / 2**30:.2f} GiB > 80% of {free / 2**30:.1f} GiB free; "
            f"the largest part is {BLAME[largest]}: {ADVICE[largest]}")
    if requested > 0:
        return requested
    return max(d for d in range(1, batch + 1) if batch % d == 0 and d <= fits)


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator's ("DefaultCPUAllocator: can't allocate memory")."""
    text = str(err).lower()
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def train_flops_per_token(width: int, depth: int, seq_len: int, vocab: int) -> int:
    """Training FLOPs of one member per token: 6·(12·L·d² + d·V) for the matmuls (forward and backward, the
    output layer included) + 6·L·d·T for causal attention's scores and mixing."""
    return 6 * (12 * depth * width**2 + width * vocab) + 6 * depth * width * seq_len


def mfu(tokens_per_s: float, width: int, depth: int, seq_len: int, vocab: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: ``train_flops_per_token`` × tokens/s ÷ the device's peak (benchmarks measure it)."""
    return train_flops_per_token(width, depth, seq_len, vocab) * tokens_per_s / peak_flops


def describe(device: torch.device) -> str:
    """The device in words, for plans and reports: the GPU's name, or the CPU's cores and bf16 support."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU ({cores} cores, {'AVX512-BF16' if cpu_has_native_bf16() else 'no native bf16'})"


__all__ = ["StepWeights", "compile_fn", "compute_dtype", "describe", "free_bytes", "logit_chunk", "mfu",
           "plan_micro_batch", "resolve_compile", "resolve_device", "resolve_precision", "rows_chunk",
           "train_flops_per_token"]
