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
from .device import compile_fn
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
        self._views: dict[tuple, list[torch.Tensor]] = {}  # per-member, per-tensor views of persistent buffers
        K = self.flat.shape[0]
        self.params = {n: self.flat[:, self.slices[n]].view(K, *self.shapes[n]).detach().requires_grad_(True)
                       for n in self.names}

    def row(self, per_tensor: dict[str, float]) -> torch.Tensor:
        """A per-tensor constant expanded to a row ``[1, P]``."""
        return torch.cat([torch.full((self.slices[n].stop - self.slices[n].start,), float(per_tensor[n]))
                          for n in self.names]).to(self.flat.device).unsqueeze(0)

    def per_tensor(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-member, per-tensor RMS of a ``[K, P]`` tensor: ``{name: [K]}``. One foreach norm over the
        per-member, per-tensor views (a handful of multi-tensor kernels on a GPU, no atomics)."""
        K = x.shape[0]
        key = (x.data_ptr(), tuple(x.shape))
        views = self._views.get(key)
        if views is None:  # the views of a persistent buffer (g, Δ, the weights) are made once, then reused
            views = [x[k, self.slices[n]] for k in range(K) for n in self.names]
            if len(self._views) < 8:
                self._views[key] = views
        norms = torch.stack(torch._foreach_norm(views)).view(K, len(self.names)).float()
        return dict(zip(self.names, (norms / self.sizes.sqrt()).unbind(1)))


def lr_at(t: torch.Tensor, peak: torch.Tensor, warmup: torch.Tensor, total: int, min_lr: float) -> torch.Tensor:
    """``lr_schedule`` vectorised: t float64 (0-based steps, any shape broadcasting against ``[K, 1]``), peak
    and warmup ``[K, 1]`` float64 -> per-member LR, float64."""
    warm = peak * (t + 1) / warmup.clamp(min=1)
    progress = ((t - warmup) / (total - warmup).clamp(min=1)).clamp(0.0, 1.0)
    cosine = min_lr + (peak - min_lr) * 0.5 * (1.0 + torch.cos(math.pi * progress))
    return torch.where(t < warmup, warm, cosine)


def adamw_update(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, d: torch.Tensor,
                 keep: torch.Tensor, clip_coef: torch.Tensor, step_lr: torch.Tensor, decay: torch.Tensor,
                 beta1: float, beta2: torch.Tensor, eps: torch.Tensor, bias1: torch.Tensor, bias2: torch.Tensor,
                 lr_mult: torch.Tensor | None) -> torch.Tensor:
    """One masked AdamW update of ``[K, P]`` buffers, in place; returns the Adam direction Δ (in ``d``).

    ``keep [K, 1]`` is 1 for a member that updates and 0 for a frozen one: a frozen member's gradient is
    zeroed and its moment and weight updates are multiplied by 0, which leaves p, m and v bit-identical without
    a clone/restore or a host decision. ``clip_coef``, ``step_lr`` (s_t·η), ``decay`` (the decay factor),
    ``beta2``, ``eps`` and the bias corrections ``bias1`` = 1 − β1^t, ``bias2`` = 1 − β2^t are ``[K, 1]``;
    ``lr_mult`` is ``[1, P]`` (μParam) or None."""
    g.mul_(clip_coef * keep).nan_to_num_(0.0, 0.0, 0.0)  # clip (paper §3.1); a frozen member's NaN gradient -> 0
    torch.sub(g, m, out=d)
    m.addcmul_(d, (1.0 - beta1) * keep)  # m ← β1·m + (1 − β1)·g
    torch.sub(g.square_(), v, out=d)
    v.addcmul_(d, (1.0 - beta2) * keep)  # v ← β2·v + (1 − β2)·g²
    torch.div(v, bias2, out=d).sqrt_().add_(eps)
    torch.div(m, d, out=d).div_(bias1)  # Adam direction Δ = m̂ / (sqrt(v̂) + ε)
    p.addcmul_(p, decay * keep, value=-1.0)  # θ ← θ − decay·θ, from the old θ (paper §3.2.2)
    lr = step_lr * keep
    p.sub_(d * lr if lr_mult is None else d * lr * lr_mult)
    return d


class BatchedAdamW:
    """AdamW for K members at once, on the device: the schedule, clipping, masking of frozen members and the
    update never wait for the host. ``step`` applies one update to the members marked active."""

    def __init__(self, fp: FlatParams, specs: dict[str, ParamSpec], members: list[Member], cfg: OptimConfig,
                 total_steps: int, compile: bool = False) -> None:
        device = fp.flat.device

        def col(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)  # [K, 1]

        self.fp, self.cfg, self.members, self.total_steps = fp, cfg, members, total_steps
        # Every step's per-member numbers, computed once: [steps + 1, K, 4] = (s_t·η, s_t, 1 − β1^(t+1),
        # 1 − β2^(t+1)) for the step t about to be taken, so a step reads one row on the device (no host round-trip)
        t = torch.arange(total_steps + 1, dtype=torch.float64).view(-1, 1, 1)
        peak = torch.tensor([m.lr for m in members], dtype=torch.float64).unsqueeze(1)
        lr = lr_at(t, peak, torch.tensor([m.warmup for m in members], dtype=torch.float64).unsqueeze(1),
                   total_steps, cfg.min_lr)
        beta2 = torch.tensor([m.beta2 for m in members], dtype=torch.float64).unsqueeze(1)
        self._table = torch.cat([lr, lr / peak, (1 - cfg.beta1 ** (t + 1)).expand_as(lr), 1 - beta2 ** (t + 1)],
                                dim=2).float().to(device)
        self.wd = col([m.weight_decay for m in members])
        self.independent = col([m.independent_weight_decay for m in members], torch.bool)
        self.eps = col([m.eps for m in members])
        self.beta2 = col([m.beta2 for m in members])
        mults = {n: specs[n].lr_mult for n in fp.names}
        self.lr_mult = fp.row(mults) if any(v != 1.0 for v in mults.values()) else None  # μParam (§3.4)
        self.decay_mask = fp.row({n: float(specs[n].decay) for n in fp.names})  # norm scales are not decayed
        self.m = torch.zeros_like(fp.flat)
        self.v = torch.zeros_like(fp.flat)
        self.g = torch.empty_like(fp.flat)  # the gradient [K, P], filled by the step (device.StepWeights)
        self._d = torch.empty_like(fp.flat)  # scratch [K, P]
        self.t = torch.zeros((), dtype=torch.long, device=device)  # optimizer steps taken, on the device
        self._update = compile_fn(adamw_update, compile)

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "t": int(self.t)}

    def load_state_dict(self, state: dict) -> None:
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])
        self.t.fill_(int(state["t"]))

    @torch.no_grad()
    def step(self, g: torch.Tensor, active: torch.Tensor, want_stats: bool = False) -> dict[str, torch.Tensor]:
        """One AdamW step on ``fp.flat`` from the gradient ``g [K, P]`` (consumed). ``active`` [K] bool: frozen
        members keep weights and moments bit for bit; so does a member whose gradient is not finite.

        Returns ``grad_norm`` [K] (before clipping), ``lr`` [K], ``applied`` [K] and, when ``want_stats``, per
        tensor ``grad_rms/<name>`` (before clipping), ``update_rms/<name>`` (RMS of the Adam direction Δ, i.e.
        the update divided by the LR) and ``param_rms/<name>``, each [K]. Nothing here waits for the device.
        """
        c, fp = self.cfg, self.fp
        grad_norm = torch.linalg.vector_norm(g, dim=1)  # global norm per member, before clipping (paper §3.1)
        applied = active & torch.isfinite(grad_norm)
        stats = {"grad_norm": grad_norm, "applied": applied}
        if want_stats:
            stats.update({f"grad_rms/{n}": r for n, r in fp.per_tensor(g).items()})  # before clipping
        row = self._table[self.t.clamp(max=self.total_steps)]  # [K, 4], read on the device
        lr_t, s_t, bias1, bias2 = row.unsqueeze(2).unbind(1)  # each [K, 1]; lr_t = s_t · η, s_t in [0, 1]
        self.t += 1
        step_lr = lr_t
        if c.rms_scaled_lr:  # Appendix E.14: each tensor's LR × max(RMS(p), 1e-3)
            rms = torch.stack(list(fp.per_tensor(fp.flat).values()), dim=1)  # [K, n_tensors]
            step_lr = lr_t * rms.clamp(min=1e-3).repeat_interleave(fp.sizes, dim=1)
        lr_mult = self.lr_mult
        # independent: θ −= s·λ·θ ; coupled: θ −= s·η·λ·θ (paper §3.2.2), with η the tensor's LR
        eff = step_lr if lr_mult is None else step_lr * lr_mult  # [K, 1] or [K, P]
        decay = torch.where(self.independent, s_t * self.wd, eff * self.wd) * self.decay_mask
        clip_coef = (c.clip / (grad_norm + 1e-6)).clamp(max=1.0).unsqueeze(1)
        keep = applied.float().unsqueeze(1)
        delta = self._update(fp.flat, self.m, self.v, g, self._d, keep, clip_coef, step_lr, decay,
                             c.beta1, self.beta2, self.eps, bias1, bias2, lr_mult)
        if want_stats:
            stats.update({f"update_rms/{n}": r for n, r in fp.per_tensor(delta).items()})
            stats.update({f"param_rms/{n}": r for n, r in fp.per_tensor(fp.flat).items()})
        stats["lr"] = lr_t.squeeze(1)
        return stats
