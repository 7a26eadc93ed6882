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
    that drift to -1e2 (the output-logit divergence). The backward writes the gradient into a single
    [K, N, V] buffer in place, softmax·(g_ce + 2·g_z·log Z)/N − onehot·g_ce/N, instead of the four
    temporaries autograd would make.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, with_mean: bool):  # type: ignore[override]
        z = logits.float()  # float32 for the softmax and the losses
        lse = torch.logsumexp(z, dim=-1)  # [K, N]
        idx = targets.view(1, -1, 1).expand(z.shape[0], -1, 1)
        ce = (lse - z.gather(-1, idx).squeeze(-1)).mean(1)
        z_sq = lse.square().mean(1)
        ctx.save_for_backward(z, lse, idx)
        ctx.in_dtype = logits.dtype
        # the mean logit reads all of [K, N, V]: only on logged steps, not on the hot path
        mean = z.mean(dim=(1, 2)) if with_mean else torch.full_like(ce, float("nan"))
        return ce, z_sq, lse.mean(1), mean

    @staticmethod
    def backward(ctx, g_ce, g_zsq, _g_logz, _g_mean):  # type: ignore[override]
        z, lse, idx = ctx.saved_tensors
        n = z.shape[1]
        grad = torch.sub(z, lse.unsqueeze(-1)).exp_()  # softmax, [K, N, V]
        grad.mul_(((g_ce.unsqueeze(1) + 2.0 * g_zsq.unsqueeze(1) * lse) / n).unsqueeze(-1))
        grad.scatter_add_(-1, idx, (-g_ce / n).view(-1, 1, 1).expand(-1, n, 1))
        return grad.to(ctx.in_dtype), None, None


def loss_parts(logits: torch.Tensor, targets: torch.Tensor, diagnostics: bool = True) -> LossParts:
    """logits [K, B, T, V] (any dtype), targets [B, T] -> per-member parts (``logit_mean`` only with diagnostics)."""
    K, V = logits.shape[0], logits.shape[-1]
    ce, z_sq, log_z, logit_mean = _CEZ.apply(logits.reshape(K, -1, V), targets.reshape(-1), diagnostics)
    return LossParts(ce=ce, z_sq=z_sq, log_z=log_z.detach(), logit_mean=logit_mean.detach() if diagnostics else None)


def total_loss(parts: LossParts, z_coef: torch.Tensor) -> torch.Tensor:
    """Scalar to backpropagate: Σ_k (CE_k + c_k·mean((log Z)²)_k). Summing keeps members independent:
    member k's parameters only receive the gradient of its own term."""
    return (parts.ce + z_coef * parts.z_sq).sum()
