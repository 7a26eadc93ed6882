"""What is measured each logged step (paper §3 definitions), gathered per member into a long table.

One row per (step, member). ``step`` counts the updates applied before the measurement: the row of step s
holds the training loss of batch s and, on evaluation steps, the validation cross-entropy after s updates;
the last row (step = steps) holds only the final evaluation. Columns that were not measured are null.
"""

from __future__ import annotations


import numpy as np
import polars as pl
import torch

from .device import logit_chunk


@torch.no_grad()
def max_attention_logit(q: torch.Tensor, k: torch.Tensor, scale: float, per_head: bool = False) -> torch.Tensor:
    """The max pre-softmax attention logit of each sequence over heads and causal positions (paper §3.1.1).
    q, k [N, H, T, Dh] (after any q/k norm and RoPE) -> [N], or [N, H] per head (``per_head``: what QK-clip reads). The one place it is computed: the proxy model and the
    monitor of a user's model both call it. A fused attention kernel never shows its logits, so this is a second
    QKᵀ on logged steps only, in chunks of sequences (``device.logit_chunk``) so the [chunk, H, T, T] logits stay
    small; float32, so a logit near divergence is exact."""
    n, h, t, _ = q.shape
    bias = torch.full((t, t), float("-inf"), device=q.device).triu(1)  # [T, T]: -inf above the diagonal
    chunk = max(1, min(n, logit_chunk(q.device, h * t * t)))
    maxima = []
    for i in range(0, n, chunk):
        logits = torch.matmul(q[i:i + chunk].float(), k[i:i + chunk].float().transpose(-1, -2))  # float32: exact
        logits.mul_(scale).add_(bias)  # in place
        maxima.append(logits.flatten(2).amax(dim=2) if per_head else logits.flatten(1).amax(dim=1))
    return torch.cat(maxima)


class MetricsLog:
    """Collects per-step columns as float arrays [K]; rows become a polars frame at the end."""

    def __init__(self, members: int) -> None:
        self.members = members
        self.rows: list[tuple[int, dict[str, np.ndarray]]] = []

    def add(self, step: int, cols: dict[str, torch.Tensor | np.ndarray | float]) -> dict[str, np.ndarray]:
        """Record ``cols`` (each [K] or a scalar) at ``step``; returns them as host arrays."""
        k = self.members
        # one device-to-host copy for the whole step: stack every column into [C, K]
        device = next((v.device for v in cols.values() if isinstance(v, torch.Tensor)), None)
        with torch.no_grad():  # a few hundred tiny columns per step in a monitored loop: no per-column detach
            stacked = torch.stack([(v if isinstance(v, torch.Tensor) else torch.as_tensor(v, device=device))
                                   .float().expand(k) for v in cols.values()]).cpu()
        out = dict(zip(cols, stacked.numpy().astype(np.float64)))
        if self.rows and self.rows[-1][0] == step:  # e.g. the evaluation of a step already logged
            self.rows[-1][1].update(out)
        else:
            self.rows.append((step, out))
        return out

    def truncate(self, step: int) -> None:
        """Drop rows at or after ``step`` (used when resuming from a checkpoint)."""
        self.rows = [(s, c) for s, c in self.rows if s < step]

    def state(self) -> dict:
        return {"steps": [s for s, _ in self.rows],
                "cols": [{k: torch.from_numpy(v.copy()) for k, v in c.items()} for _, c in self.rows]}

    def load_state(self, state: dict) -> None:
        self.rows = [(int(s), {k: v.numpy() for k, v in c.items()}) for s, c in zip(state["steps"], state["cols"])]

    def frame(self) -> pl.DataFrame:
        """Long table: one row per (step, member); columns in first-seen order, missing values null (a measured
        NaN stays NaN). Built column by column from the float64 arrays: 8 bytes a value, not a Python float's 32."""
        names: list[str] = []
        for _, cols in self.rows:
            names += [n for n in cols if n not in names]
        k, n_rows = self.members, len(self.rows)
        data: dict[str, pl.Series] = {
            "step": pl.Series("step", np.repeat(np.array([s for s, _ in self.rows], dtype=np.int64), k)),
            "member": pl.Series("member", np.tile(np.arange(k, dtype=np.int64), n_rows))}
        nan = np.full(k, np.nan)
        for n in names:
            values = np.concatenate([cols.get(n, nan) for _, cols in self.rows]) if n_rows else np.zeros(0)
            present = np.repeat(np.array([n in cols for _, cols in self.rows], dtype=bool), k)
            series = pl.Series(n, values, dtype=pl.Float64)
            data[n] = series if present.all() else pl.select(
                pl.when(pl.Series(present)).then(series).otherwise(None).alias(n)).to_series()
        if not n_rows:
            return pl.DataFrame(schema={"step": pl.Int64, "member": pl.Int64, **{n: pl.Float64 for n in names}})
        return pl.DataFrame(list(data.values()))


BYTES_PER_LOGGED_VALUE = 32
"""Peak host bytes one logged value costs a group: the float64 in ``MetricsLog``, its copy in each checkpoint's
state, and the frame (and its parquet buffer) built at the end."""


def log_bytes(members: int, logged_steps: int, columns: int) -> int:
    """Host memory the metrics log of a group grows to (``BYTES_PER_LOGGED_VALUE``): with 10,000 members it is
    gigabytes, so the memory plan counts it before anything is allocated."""
    return members * logged_steps * columns * BYTES_PER_LOGGED_VALUE


def logged_columns(depth: int, tensors: int) -> int:
    """Columns a proxy group logs per step: ~13 scalars (loss, z-loss, eval loss, LR, log Z, ‖μ‖, ...), the
    per-layer ``model.STATS`` (4 per layer), and gradient, update and parameter RMS per tensor (3 per tensor)."""
    return 13 + 4 * depth + 3 * tensors
