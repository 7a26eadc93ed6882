"""AdamW over a member axis (paper §3.1–3.2): per-member clipping, schedule, decay modes, LR multipliers; and the
optimizers and clips adopted after the paper (``optim.optimizer``: Adam-atan2, Muon; ``members.zclip``; QK-clip).

All parameters of a group live in one float32 buffer ``flat [K, P]`` (the master weights); each model tensor
is a leaf view into it. The optimizer then does its arithmetic on ``[K, P]`` at once: per-member scalars
(η, λ, ε, β2, warm-up, decay mode) are ``[K, 1]`` columns and per-tensor constants (μParam LR multiplier,
decay on/off) are ``[1, P]`` rows. That keeps a step to a few large ops instead of a few per tensor.
"""

from __future__ import annotations

import math

import torch

from ..core.config import ConfigError, Member, OptimConfig
from .device import compile_fn
from .model import ParamSpec, is_hidden_matrix

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Muon's quintic Newton–Schulz coefficients (KellerJordan/Muon; ``torch.optim.Muon``'s ``ns_coefficients``)."""
NS_STEPS = 5
"""Newton–Schulz iterations per Muon step (both references' default)."""
NS_EPS = 1e-7
"""Floor of the Frobenius norm a Muon update is divided by (``torch.optim.Muon``'s ``eps``)."""
NS_DTYPE = torch.bfloat16
"""The dtype of Muon's Newton–Schulz iteration: bf16 as both references (it is insensitive to it)."""
ZCLIP_EPS = 1e-6
"""ZClip's ε in z = (g − μ)/(σ + ε) (bluorion-com/ZClip default)."""


def lr_schedule(step: int, peak: float, warmup: int, total: int, min_lr: float) -> float:
    """LR at optimizer step ``step`` (0-based): linear warm-up to ``peak`` over ``warmup`` steps, then cosine
    decay to the absolute minimum ``min_lr`` at ``total`` (paper §3.1)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_order(specs: dict[str, ParamSpec], cfg: OptimConfig) -> list[str]:
    """The order of the tensors in ``FlatParams``: the model's, except that Muon puts the hidden matrices first,
    grouped by shape, so each shape is one contiguous ``[K, n, A, B]`` view that one batched Newton–Schulz reads."""
    names = list(specs)
    if cfg.optimizer != "muon":
        return names
    hidden = [n for n in names if is_hidden_matrix(n)]
    shapes = list(dict.fromkeys(specs[n].shape for n in hidden))
    return [n for shape in shapes for n in hidden if specs[n].shape == shape] + [n for n in names if n not in hidden]


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


def _moments(m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, d: torch.Tensor, keep: torch.Tensor,
             clip_coef: torch.Tensor, beta1: float, beta2: torch.Tensor) -> None:
    """Clip and mask ``g`` in place, then m ← β1·m + (1 − β1)·g and v ← β2·v + (1 − β2)·g² for the kept members
    (``g`` is left holding g², ``d`` is scratch)."""
    g.mul_(clip_coef * keep).nan_to_num_(0.0, 0.0, 0.0)  # clip (paper §3.1); a frozen member's NaN gradient -> 0
    torch.sub(g, m, out=d)
    m.addcmul_(d, (1.0 - beta1) * keep)  # m ← β1·m + (1 − β1)·g
    torch.sub(g.square_(), v, out=d)
    v.addcmul_(d, (1.0 - beta2) * keep)  # v ← β2·v + (1 − β2)·g²


def _apply(p: torch.Tensor, d: torch.Tensor, keep: torch.Tensor, step_lr: torch.Tensor, decay: torch.Tensor,
           lr_mult: torch.Tensor | None) -> None:
    """θ ← θ − decay·θ − s_t·η·Δ for the kept members (decay from the old θ, paper §3.2.2)."""
    p.addcmul_(p, decay * keep, value=-1.0)
    lr = step_lr * keep
    p.sub_(d * lr if lr_mult is None else d * lr * lr_mult)


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
    _moments(m, v, g, d, keep, clip_coef, beta1, beta2)
    torch.div(v, bias2, out=d).sqrt_().add_(eps)
    torch.div(m, d, out=d).div_(bias1)  # Adam direction Δ = m̂ / (sqrt(v̂) + ε)
    _apply(p, d, keep, step_lr, decay, lr_mult)
    return d


def atan2_update(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, d: torch.Tensor,
                 keep: torch.Tensor, clip_coef: torch.Tensor, step_lr: torch.Tensor, decay: torch.Tensor,
                 beta1: float, beta2: torch.Tensor, a: float, b: float, bias1: torch.Tensor, bias2: torch.Tensor,
                 lr_mult: torch.Tensor | None) -> torch.Tensor:
    """``adamw_update`` with Adam-atan2's direction Δ = a·atan2(m̂, b·√v̂) and no ε (Everett et al. 2024;
    lucidrains/adam-atan2-pytorch): invariant to the scale of the gradient, |Δ| ≤ a·π/2."""
    _moments(m, v, g, d, keep, clip_coef, beta1, beta2)
    torch.div(v, bias2, out=d).sqrt_().mul_(b)  # b·sqrt(v̂)
    torch.atan2(m / bias1, d, out=d).mul_(a)
    _apply(p, d, keep, step_lr, decay, lr_mult)
    return d


def newton_schulz(x: torch.Tensor) -> torch.Tensor:
    """Muon's orthogonalisation of a batch of matrices x [N, A, B] (A ≤ B): ``NS_STEPS`` quintic Newton–Schulz
    iterations in bf16 after dividing each matrix by its Frobenius norm, as ``torch.optim.Muon`` (and
    KellerJordan/Muon) do for one matrix; here one batched matmul per iteration for every member and layer."""
    a, b, c = NS_COEFFICIENTS
    x = x.to(NS_DTYPE)  # bf16, as both references: the iteration is insensitive to it and twice as fast on a GPU
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=NS_EPS)
    for _ in range(NS_STEPS):
        gram = torch.bmm(x, x.mT)
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x


def muon_lr_ratio(fan_in: int, fan_out: int, adjust: str) -> float:
    """Muon's LR multiplier of an out×in matrix (``torch.optim.Muon``'s ``_adjust_lr`` with A = out, B = in)."""
    if adjust == "original":
        return math.sqrt(max(1.0, fan_out / fan_in))
    return 0.2 * math.sqrt(max(fan_out, fan_in))  # match_rms_adamw (Moonlight)


def muon_update(p: torch.Tensor, m: torch.Tensor, g: torch.Tensor, d: torch.Tensor, keep: torch.Tensor,
                clip_coef: torch.Tensor, step_lr: torch.Tensor, decay: torch.Tensor, momentum: float,
                blocks: list[tuple[int, int, int, int, int, float]], lr_mult: torch.Tensor | None) -> torch.Tensor:
    """One masked Muon update of the hidden matrices ``[K, M]`` (the first M columns of the flat buffers), in place;
    returns the direction (in ``d``): the orthogonalised Nesterov momentum × each matrix's LR ratio.

    ``blocks``: (start, stop, n, fan_in, fan_out, ratio) per shape, each ``[K, n, fan_in, fan_out]`` contiguous.
    Momentum as ``torch.optim.Muon``: m ← m + (1 − μ)(g − m), update g + μ(m − g) (Nesterov). Decay from the old θ
    with the unadjusted LR, as both references (``decay``, like AdamW's)."""
    K = p.shape[0]
    g.mul_(clip_coef * keep).nan_to_num_(0.0, 0.0, 0.0)
    m.lerp_(g, (1.0 - momentum) * keep)
    torch.lerp(g, m, momentum, out=d)
    for start, stop, n, fan_in, fan_out, ratio in blocks:
        u = d[:, start:stop].view(K, n, fan_in, fan_out)  # our layout is x @ W: W [in, out] = nn.Linear's weightᵀ
        # torch.optim.Muon works on the weight [out, in] and transposes it when out > in: the wide one of W, Wᵀ
        wide = fan_out > fan_in
        x = u.reshape(K * n, fan_in, fan_out) if wide else u.mT.reshape(K * n, fan_out, fan_in)
        o = newton_schulz(x)
        u.copy_((o if wide else o.mT).reshape(K, n, fan_in, fan_out)).mul_(ratio)
    _apply(p, d, keep, step_lr, decay, lr_mult)
    return d


@torch.no_grad()
def qk_clip(fp: FlatParams, head_max: torch.Tensor, tau: torch.Tensor, alpha: float, heads: int) -> torch.Tensor:
    """QK-clip (Kimi K2's MuonClip; Megatron-LM ``clip_qk``), right after the optimizer step: for each layer l,
    member k and head h with max pre-softmax logit S > τ_k on the step's batch, W_q's columns of h × η^α and W_k's
    × η^(1−α), η = τ_k/S, so that head's logits on that batch scale by η. ``head_max`` [L, K, H]; ``tau`` [K]
    (0 = off for that member). Every other head is multiplied by exactly 1 (bit-identical). Returns the number of
    heads clipped per member [K]. As in Megatron-LM every block uses the maxima of the same forward pass, so on that
    batch the first block's heads end at τ exactly and a deeper block's, whose input the clips below it changed,
    near τ; the next batch may pass τ a little (the "τ·(1+δ)" of MITIGATIONS.md)."""
    on = (tau > 0).view(1, -1, 1) & torch.isfinite(head_max) & (head_max > tau.view(1, -1, 1))  # [L, K, H]
    eta = torch.where(on, tau.view(1, -1, 1) / head_max.clamp(min=1e-30), torch.ones_like(head_max))
    K = fp.flat.shape[0]
    for i in range(head_max.shape[0]):
        for name, power in ((f"layers.{i}.wq", alpha), (f"layers.{i}.wk", 1.0 - alpha)):
            w = fp.flat[:, fp.slices[name]].view(K, -1, heads, fp.shapes[name][1] // heads)  # [K, D, H, Dh]
            w.mul_(eta[i].pow(power).view(K, 1, heads, 1))
    return on.sum(dim=(0, 2)).float()


def output_rows(fp: FlatParams) -> tuple[torch.Tensor, int]:
    """The output layer as a view of the master weights and its vocabulary axis: ``unembed`` [K, D, V] (axis -1),
    or with tied embeddings the embedding [K, V, D] (axis 1)."""
    name = "unembed" if "unembed" in fp.slices else "embed"
    K = fp.flat.shape[0]
    return fp.flat[:, fp.slices[name]].view(K, *fp.shapes[name]), (-1 if name == "unembed" else 1)


def mu_norm(fp: FlatParams) -> torch.Tensor:
    """‖μ‖ per member [K]: the norm of the mean output-embedding row (Output Embedding Centering's μ; the mean output
    logit is μ·h̄). Float32, from the master weights."""
    w, axis = output_rows(fp)
    return w.float().mean(dim=axis).norm(dim=-1)


def mu_center(fp: FlatParams, on: torch.Tensor) -> None:
    """μ-centering (``optim.mu_centering``), right after the optimizer step: W_out ← W_out − μ for the members
    ``on`` [K] (bool); the others are left bit-identical (``torch.where``, never a multiply by 0)."""
    w, axis = output_rows(fp)
    centred = w - w.mean(dim=axis, keepdim=True)
    w.copy_(torch.where(on.view(-1, *([1] * (w.dim() - 1))), centred, w))


class BatchedAdamW:
    """AdamW for K members at once, on the device: the schedule, clipping, masking of frozen members and the
    update never wait for the host. ``step`` applies one update to the members marked active.

    ``optim.optimizer`` swaps the update: Adam-atan2 everywhere, or Muon on the hidden matrices (the first
    ``muon_width`` columns, ``param_order``) with AdamW on the rest. ``members.zclip`` swaps the fixed clip for ZClip
    per member. ``eps_mult``: CompleteP's ε multiplier (``model.depth_eps_mult``)."""

    def __init__(self, fp: FlatParams, specs: dict[str, ParamSpec], members: list[Member], cfg: OptimConfig,
                 total_steps: int, compile: bool = False, eps_mult: float = 1.0) -> None:
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
        # the integrated LR Σ_{s≤t} η_s after step t [steps + 1, K] (float64 sum): the clock of the output-logit
        # drift (drift.py; Output Embedding Centering: ‖μ‖ grows with it), logged as ``lr_integral``
        self._integral = lr.cumsum(0).squeeze(2).float().to(device)
        self.wd = col([m.weight_decay for m in members])
        self.independent = col([m.independent_weight_decay for m in members], torch.bool)
        self.eps = col([m.eps * eps_mult for m in members]) if eps_mult != 1.0 else col([m.eps for m in members])
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
        self._atan2 = compile_fn(atan2_update, compile)
        self.muon_width, self.muon_blocks = 0, []  # Muon: the hidden matrices are fp.flat[:, :muon_width]
        if cfg.optimizer == "muon":
            self._muon_layout(specs)
        self.zclip = None  # ZClip's per-member state (``_zclip``), when a member has it on
        if any(m.zclip is not None for m in members):
            K = len(members)
            on = [m.zclip is not None for m in members]
            self.zclip = {"on": torch.tensor(on, device=device),
                          "z": torch.tensor([m.zclip or 1.0 for m in members], device=device),
                          "buffer": torch.zeros(cfg.zclip_warmup, K, device=device),  # the warm-up norms
                          "seen": torch.zeros(K, dtype=torch.long, device=device),
                          "mean": torch.zeros(K, device=device), "var": torch.zeros(K, device=device),
                          "clips": torch.zeros(K, device=device)}  # steps clipped by the z-score, per member

    def _muon_layout(self, specs: dict[str, ParamSpec]) -> None:
        """The contiguous ``[K, n, A, B]`` blocks of hidden matrices Muon steps (``param_order`` put them first)."""
        fp, start = self.fp, 0
        hidden = [n for n in fp.names if is_hidden_matrix(n)]
        if not hidden:
            raise ConfigError("optim.optimizer: muon needs hidden 2-D weights (q, k, v, output projection, MLP); "
                              "this model has none; use adamw or adam_atan2")
        if fp.names[:len(hidden)] != hidden:
            raise AssertionError("Muon needs the hidden matrices first in FlatParams (optim.param_order)")
        for shape in dict.fromkeys(fp.shapes[n] for n in hidden):
            names = [n for n in hidden if fp.shapes[n] == shape]
            stop = fp.slices[names[-1]].stop
            fan_in, fan_out = shape
            self.muon_blocks.append((start, stop, len(names), fan_in, fan_out,
                                     muon_lr_ratio(fan_in, fan_out, self.cfg.muon_lr_adjust)))
            start = stop
        self.muon_width = start

    def state_dict(self) -> dict:
        state = {"m": self.m, "v": self.v, "t": int(self.t)}
        if self.zclip is not None:
            state["zclip"] = self.zclip
        return state

    def load_state_dict(self, state: dict) -> None:
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])
        self.t.fill_(int(state["t"]))
        for name, value in state.get("zclip", {}).items():
            self.zclip[name].copy_(value)

    def _zclip(self, grad_norm: torch.Tensor, applied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ZClip (bluorion-com/ZClip ``zclip.py``, mode zscore, adaptive_scaling), vectorised over members, on the
        device: the clip coefficient [K] and whether each member's norm was a z-score spike [K]. Members without
        ZClip get the fixed clip; during the warm-up a member collects its norms with the fixed clip."""
        z, c = self.zclip, self.cfg
        warm = z["seen"] < c.zclip_warmup
        collect = applied & warm
        slot = z["seen"].clamp(max=c.zclip_warmup - 1).view(1, -1)
        z["buffer"].scatter_(0, slot, torch.where(collect, grad_norm, z["buffer"].gather(0, slot)[0]).view(1, -1))
        z["seen"] += collect.long()
        init = collect & (z["seen"] >= c.zclip_warmup)  # the buffer is full: μ and σ² from its norms
        mean0 = z["buffer"].mean(0)
        var0 = (z["buffer"] - mean0).square().mean(0)
        std = z["var"].sqrt()
        score = (grad_norm - z["mean"]) / (std + ZCLIP_EPS)
        spike = z["on"] & ~warm & (score > z["z"])
        adaptive = torch.where(spike, z["mean"] + z["z"] * std / (score / z["z"]), grad_norm)
        effective = torch.minimum(adaptive, torch.full_like(adaptive, c.clip))
        coef = torch.where(grad_norm > effective, effective / (grad_norm + 1e-6), torch.ones_like(grad_norm))
        fixed = (c.clip / (grad_norm + 1e-6)).clamp(max=1.0)
        coef = torch.where(z["on"] & ~warm, coef, fixed)
        update = z["on"] & ~warm & applied  # the EMA takes the clipped norm (mean first, then the variance)
        mean = c.zclip_alpha * z["mean"] + (1 - c.zclip_alpha) * adaptive
        var = c.zclip_alpha * z["var"] + (1 - c.zclip_alpha) * (adaptive - mean).square()
        z["mean"] = torch.where(init, mean0, torch.where(update, mean, z["mean"]))
        z["var"] = torch.where(init, var0, torch.where(update, var, z["var"]))
        spike = spike & applied
        z["clips"] += spike.float()
        return coef, spike

    @torch.no_grad()
    def step(self, g: torch.Tensor, active: torch.Tensor, want_stats: bool = False) -> dict[str, torch.Tensor]:
        """One AdamW step on ``fp.flat`` from the gradient ``g [K, P]`` (consumed). ``active`` [K] bool: frozen
        members keep weights and moments bit for bit; so does a member whose gradient is not finite.

        Returns ``grad_norm`` [K] (before clipping), ``lr`` [K], ``lr_integral`` [K] (Σ of the LR over the steps so
        far, this one included), ``applied`` [K] and, when ``want_stats``, per
        tensor ``grad_rms/<name>`` (before clipping), ``update_rms/<name>`` (RMS of the Adam direction Δ, i.e.
        the update divided by the LR) and ``param_rms/<name>``, each [K]. Nothing here waits for the device.
        """
        c, fp = self.cfg, self.fp
        grad_norm = torch.linalg.vector_norm(g, dim=1)  # global norm per member, before clipping (paper §3.1)
        applied = active & torch.isfinite(grad_norm)
        stats = {"grad_norm": grad_norm, "applied": applied}
        if want_stats:
            stats.update({f"grad_rms/{n}": r for n, r in fp.per_tensor(g).items()})  # before clipping
        index = self.t.clamp(max=self.total_steps)
        row = self._table[index]  # [K, 4], read on the device
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
        if self.zclip is None:
            clip_coef = (c.clip / (grad_norm + 1e-6)).clamp(max=1.0).unsqueeze(1)
        else:
            coef, spike = self._zclip(grad_norm, applied)
            clip_coef = coef.unsqueeze(1)
            stats.update({"zclip_clipped": spike.float(), "zclip_clips": self.zclip["clips"].clone()})
        keep = applied.float().unsqueeze(1)
        if c.optimizer == "adam_atan2":
            delta = self._atan2(fp.flat, self.m, self.v, g, self._d, keep, clip_coef, step_lr, decay,
                                c.beta1, self.beta2, c.atan2_a, c.atan2_b, bias1, bias2, lr_mult)
        elif c.optimizer == "muon":
            delta = self._muon(g, keep, clip_coef, step_lr, decay, bias1, bias2, lr_mult)
        else:
            delta = self._update(fp.flat, self.m, self.v, g, self._d, keep, clip_coef, step_lr, decay,
                                 c.beta1, self.beta2, self.eps, bias1, bias2, lr_mult)
        if want_stats:
            stats.update({f"update_rms/{n}": r for n, r in fp.per_tensor(delta).items()})
            stats.update({f"param_rms/{n}": r for n, r in fp.per_tensor(fp.flat).items()})
        stats["lr"] = lr_t.squeeze(1)
        stats["lr_integral"] = self._integral[index]
        return stats

    def _muon(self, g: torch.Tensor, keep: torch.Tensor, clip_coef: torch.Tensor, step_lr: torch.Tensor,
              decay: torch.Tensor, bias1: torch.Tensor, bias2: torch.Tensor,
              lr_mult: torch.Tensor | None) -> torch.Tensor:
        """Muon on the hidden matrices ``[:, :M]``, AdamW on the rest ``[:, M:]``; the direction of both in ``_d``."""
        M, c, fp = self.muon_width, self.cfg, self.fp

        def cols(x: torch.Tensor | None, part: slice) -> torch.Tensor | None:
            return x if x is None or x.shape[1] == 1 else x[:, part]  # a [K, 1] column or a [K, P] / [1, P] row

        hid, rest = slice(0, M), slice(M, None)
        muon_update(fp.flat[:, hid], self.m[:, hid], g[:, hid], self._d[:, hid], keep, clip_coef, cols(step_lr, hid),
                    cols(decay, hid), c.muon_momentum, self.muon_blocks, cols(lr_mult, hid))
        if M < fp.flat.shape[1]:
            adamw_update(fp.flat[:, rest], self.m[:, rest], self.v[:, rest], g[:, rest], self._d[:, rest], keep,
                         clip_coef, cols(step_lr, rest), cols(decay, rest), c.beta1, self.beta2, self.eps, bias1,
                         bias2, cols(lr_mult, rest))
        return self._d
