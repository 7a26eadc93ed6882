"""Cross-entropy and z-loss per member (paper §3.1.2), in float32, fused into one autograd function."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossParts:
    """Per-member losses, each ``[K]``."""

    ce: torch.Tensor  # mean cross-entropy (nats/token)
    z_sq: torch.Tensor  # mean (log Z)^2, the z-loss before its coefficient
    log_z: torch.Tensor  # mean log Z (diagnostic)
    logit_mean: torch.Tensor | None  # mean output logit (diagnostic; only when asked for)


class _CEZ(torch.autograd.Function):
    """(logits [K, N, V], targets [N]) -> (ce [K], z_sq [K], log_z [K], logit_mean [K]).

    Softmax, log Z and the losses run in float32: bf16 has 8 bits of mantissa, too few for log Z of logits
    that drift to -1e2 (the output-logit divergence). They run in chunks of ``chunk`` tokens, so the float32
    copy of the logits never exists whole (in bf16 only the bf16 logits and their bf16 gradient do). The
    backward writes softmax·(g_ce + 2·g_z·log Z)/N − onehot·g_ce/N chunk by chunk into one gradient buffer,
    instead of the temporaries autograd would make.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, with_mean: bool, chunk: int):  # type: ignore[override]
        K, N, _ = logits.shape
        lse = torch.empty(K, N, dtype=torch.float32, device=logits.device)
        picked = torch.empty(K, N, dtype=torch.float32, device=logits.device)
        total = torch.zeros(K, dtype=torch.float32, device=logits.device)
        idx = targets.view(1, -1, 1).expand(K, -1, 1)
        for a in range(0, N, chunk):
            z = logits[:, a:a + chunk].float()  # float32 for the softmax and the losses
            torch.logsumexp(z, dim=-1, out=lse[:, a:a + chunk])
            picked[:, a:a + chunk] = z.gather(-1, idx[:, a:a + chunk]).squeeze(-1)
            if with_mean:  # the mean logit reads all of [K, N, V]: only on logged steps
                total += z.sum(dim=(1, 2))
        ce = (lse - picked).mean(1)
        ctx.save_for_backward(logits, lse, idx)
        ctx.chunk = chunk
        mean = total / (N * logits.shape[-1]) if with_mean else torch.full_like(ce, float("nan"))
        return ce, lse.square().mean(1), lse.mean(1), mean

    @staticmethod
    def backward(ctx, g_ce, g_zsq, _g_logz, _g_mean):  # type: ignore[override]
        logits, lse, idx = ctx.saved_tensors
        n, chunk = logits.shape[1], ctx.chunk
        grad = torch.empty_like(logits)
        coef = (g_ce.unsqueeze(1) + 2.0 * g_zsq.unsqueeze(1) * lse) / n  # [K, N]
        hit = (-g_ce / n).view(-1, 1, 1)
        for a in range(0, n, chunk):
            p = torch.sub(logits[:, a:a + chunk].float(), lse[:, a:a + chunk].unsqueeze(-1)).exp_()  # softmax
            p.mul_(coef[:, a:a + chunk].unsqueeze(-1))
            p.scatter_add_(-1, idx[:, a:a + chunk], hit.expand(-1, p.shape[1], 1))
            grad[:, a:a + chunk] = p
        return grad, None, None, None


def loss_parts(logits: torch.Tensor, targets: torch.Tensor, diagnostics: bool = True, chunk: int = 1 << 30) -> LossParts:
    """logits [K, B, T, V] (any dtype), targets [B, T] -> per-member parts (``logit_mean`` only with
    diagnostics). ``chunk``: tokens per float32 chunk (``device.rows_chunk``)."""
    K, V = logits.shape[0], logits.shape[-1]
    ce, z_sq, log_z, logit_mean = _CEZ.apply(logits.reshape(K, -1, V), targets.reshape(-1), diagnostics, chunk)
    return LossParts(ce=ce, z_sq=z_sq, log_z=log_z.detach(), logit_mean=logit_mean.detach() if diagnostics else None)


def total_loss(parts: LossParts, z_coef: torch.Tensor) -> torch.Tensor:
    """Scalar to backpropagate: Σ_k (CE_k + c_k·mean((log Z)²)_k). Summing keeps members independent:
    member k's parameters only receive the gradient of its own term."""
    return (parts.ce + z_coef * parts.z_sq).sum()
