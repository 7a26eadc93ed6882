"""AdamW over a member axis (paper §3.1–3.2): per-member clipping, schedule, decay modes, LR multipliers.

All parameters of a group live in one float32 buffer ``flat [K, P]`` (the master weights); each model tensor
is a leaf view into it. The optimizer then does its arithmetic on ``[K, P]`` at once: per-member scalars
(η, λ, ε, β2, warm-up, decay mode) are ``[K, 1]`` columns and per-tensor constants (μParam LR multiplier,
decay on/off) are ``[1, P]`` rows. That keeps a step to a few large ops instead of a few per tensor.
"""

from __future__ import annotations

import math

import torch

from .config import Member, OptimConfig
from .model import ParamSpec


def lr_schedule(step: int, peak: float, warmup: int, total: int, min_lr: float) -> float:
    """LR at optimizer step ``step`` (0-based): linear warm-up to ``peak`` over ``warmup`` steps, then cosine
    decay to the absolute minimum ``min_lr`` at ``total`` (paper §3.1)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class FlatParams:
    """Parameters ``{name: [K, *shape]}`` stored in one buffer ``flat [K, P]``; ``params`` are leaf views."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.names = list(tensors)
        self.shapes = {n: tuple(t.shape[1:]) for n, t in tensors.items()}
        sizes = [math.prod(self.shapes[n]) for n in self.names]
        self.slices: dict[str, slice] = {}
        start = 0
        for n, size in zip(self.names, sizes):
            self.slices[n] = slice(start, start + size)
            start += size
        self.flat = torch.cat([t.reshape(t.shape[0], -1) for t in tensors.values()], dim=1).contiguous()
        device = self.flat.device
        self.sizes = torch.tensor(sizes, device=device)  # [n_tensors] elements per member
        self._segment = torch.repeat_interleave(torch.arange(len(sizes), device=device), self.sizes)  # [P] tensor id
        K = self.flat.shape[0]
        self.params = {n: self.flat[:, self.slices[n]].view(K, *self.shapes[n]).detach().requires_grad_(True)
                       for n in self.names}

    def row(self, per_tensor: dict[str, float]) -> torch.Tensor:
        """A per-tensor constant expanded to a row ``[1, P]``."""
        return torch.cat([torch.full((self.slices[n].stop - self.slices[n].start,), float(per_tensor[n]))
                          for n in self.names]).to(self.flat.device).unsqueeze(0)

    def flatten(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-tensor gradients -> ``[K, P]`` in the buffer's layout."""
        return torch.cat([grads[n].reshape(grads[n].shape[0], -1) for n in self.names], dim=1)

    def per_tensor(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-member, per-tensor RMS of a ``[K, P]`` tensor: ``{name: [K]}``.
        One segmented sum over the buffer (index_add_) instead of a reduction per tensor."""
        sums = torch.zeros(x.shape[0], len(self.names), device=x.device).index_add_(1, self._segment, x.square())
        return dict(zip(self.names, (sums / self.sizes).sqrt_().unbind(1)))


class BatchedAdamW:
    """AdamW for K members at once. ``step`` applies one update to the members marked active."""

    def __init__(self, fp: FlatParams, specs: dict[str, ParamSpec], members: list[Member], cfg: OptimConfig,
                 total_steps: int) -> None:
        device = fp.flat.device

        def col(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)  # [K, 1]

        self.fp, self.cfg, self.members, self.total_steps = fp, cfg, members, total_steps
        self.peak = col([m.lr for m in members])
        self.wd = col([m.weight_decay for m in members])
        self.independent = col([m.independent_weight_decay for m in members], torch.bool)
        self.eps = col([m.eps for m in members])
        self.beta2 = col([m.beta2 for m in members])
        mults = {n: specs[n].lr_mult for n in fp.names}
        self.lr_mult = fp.row(mults) if any(v != 1.0 for v in mults.values()) else None  # μParam (§3.4)
        self.decay_mask = fp.row({n: float(specs[n].decay) for n in fp.names})  # norm scales are not decayed
        self.m = torch.zeros_like(fp.flat)
        self.v = torch.zeros_like(fp.flat)
        self._g, self._d = torch.empty_like(fp.flat), torch.empty_like(fp.flat)  # scratch [K, P]
        self.t = 0  # optimizer steps taken

    def lr_at(self, step: int) -> torch.Tensor:
        """Per-member LR ``[K, 1]`` at optimizer step ``step`` (0-based)."""
        values = [lr_schedule(step, m.lr, m.warmup, self.total_steps, self.cfg.min_lr) for m in self.members]
        return torch.tensor(values, dtype=torch.float32, device=self.peak.device).unsqueeze(1)

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])
        self.t = int(state["t"])

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor, want_stats: bool = False) -> dict[str, torch.Tensor]:
        """One AdamW step on ``fp.flat``. ``active`` [K] bool: frozen members keep weights and moments as they are;
        so does a member whose gradient is not finite.

        Returns ``grad_norm`` [K] (before clipping), ``lr`` [K], ``applied`` [K] and, when ``want_stats``, per
        tensor ``grad_rms/<name>`` (before clipping), ``update_rms/<name>`` (RMS of the Adam direction Δ, i.e.
        the update divided by the LR) and ``param_rms/<name>``, each [K].

        The arithmetic is in place on preallocated ``[K, P]`` buffers (fresh large tensors cost 3-5x on a CPU);
        a frozen member's rows are computed like the others' and then restored, so the arithmetic of the
        active members is the same whether or not another member is frozen.
        """
        c, fp = self.cfg, self.fp
        p, m, v = fp.flat, self.m, self.v
        g = torch.cat([grads[n].reshape(grads[n].shape[0], -1) for n in fp.names], dim=1, out=self._g)  # [K, P]
        grad_norm = torch.linalg.vector_norm(g, dim=1)  # global norm per member, before clipping (paper §3.1)
        active = active & torch.isfinite(grad_norm)
        all_active = bool(active.all())
        stats = {"grad_norm": grad_norm, "applied": active}
        if want_stats:
            stats.update({f"grad_rms/{n}": r for n, r in fp.per_tensor(g).items()})  # before clipping
        if not all_active:
            frozen = ~active
            saved = (p[frozen].clone(), m[frozen].clone(), v[frozen].clone())
        lr_t = self.lr_at(self.t)  # [K, 1] = s_t · η
        s_t = lr_t / self.peak  # schedule multiplier in [0, 1]
        self.t += 1
        g.mul_((c.clip / (grad_norm + 1e-6)).clamp(max=1.0).unsqueeze(1))
        m.lerp_(g, 1.0 - c.beta1)  # m ← β1·m + (1 − β1)·g
        v.mul_(self.beta2).add_(g.square_().mul_(1.0 - self.beta2))  # v ← β2·v + (1 − β2)·g²  (g is spent)
        delta = torch.div(v, 1.0 - self.beta2**self.t, out=self._d).sqrt_().add_(self.eps)
        delta = torch.div(m, delta, out=delta).div_(1.0 - c.beta1**self.t)  # Adam direction Δ
        if want_stats:
            stats.update({f"update_rms/{n}": r for n, r in fp.per_tensor(delta).items()})
        step_lr = lr_t if self.lr_mult is None else lr_t * self.lr_mult  # [K, 1] or [K, P]
        if c.rms_scaled_lr:  # Appendix E.14: each tensor's LR × max(RMS(p), 1e-3)
            rms = torch.stack(list(fp.per_tensor(p).values()), dim=1)  # [K, n_tensors]
            step_lr = step_lr * rms.clamp(min=1e-3).repeat_interleave(fp.sizes, dim=1)
        # independent: θ −= s·λ·θ ; coupled: θ −= s·η·λ·θ (paper §3.2.2); decay from the old θ, then Δ
        decay = torch.where(self.independent, s_t * self.wd, step_lr * self.wd) * self.decay_mask
        p.mul_(1.0 - decay).sub_(delta.mul_(step_lr))
        if not all_active:
            p[frozen], m[frozen], v[frozen] = saved
        stats["lr"] = lr_t.squeeze(1)
        if want_stats:
            stats.update({f"param_rms/{n}": r for n, r in fp.per_tensor(p).items()})
        return stats
