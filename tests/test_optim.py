import math

import pytest
import torch

from proxyscale.core.config import Member, OptimConfig
from proxyscale.engine.losses import loss_parts, total_loss
from proxyscale.engine.model import ParamSpec
from proxyscale.engine.optim import BatchedAdamW, FlatParams, lr_schedule


def member(**kw) -> Member:
    base = dict(lr=0.1, weight_decay=0.0, independent_weight_decay=True, eps=1e-8, beta2=0.95, z_loss=0.0,
                warmup=2, seed=0)
    return Member(**{**base, **kw})


def test_schedule_warmup_then_cosine_to_absolute_min():
    assert lr_schedule(0, 1.0, 4, 20, 1e-5) == pytest.approx(0.25)
    assert lr_schedule(3, 1.0, 4, 20, 1e-5) == pytest.approx(1.0)
    assert lr_schedule(12, 1.0, 4, 20, 1e-5) == pytest.approx(1e-5 + (1 - 1e-5) * 0.5)
    assert lr_schedule(20, 1.0, 4, 20, 1e-5) == pytest.approx(1e-5)
    assert lr_schedule(0, 1.0, 0, 20, 1e-5) == pytest.approx(1.0)


def test_z_loss_against_hand_computation():
    logits = torch.tensor([[[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]]])  # [K=1, B=1, T=2, V=3]
    targets = torch.tensor([[1, 2]])
    parts = loss_parts(logits, targets)
    lz = [math.log(math.exp(1) + math.exp(2) + math.exp(0.5)), math.log(1 + math.exp(-1) + math.exp(3))]
    ce = ((lz[0] - 2.0) + (lz[1] - 3.0)) / 2
    assert parts.ce.item() == pytest.approx(ce, rel=1e-6)
    assert parts.z_sq.item() == pytest.approx((lz[0] ** 2 + lz[1] ** 2) / 2, rel=1e-6)
    assert total_loss(parts, torch.tensor([1e-4])).item() == pytest.approx(ce + 1e-4 * (lz[0] ** 2 + lz[1] ** 2) / 2, rel=1e-6)


@pytest.mark.parametrize("independent", [True, False])
def test_one_adamw_step_both_decay_modes_against_hand_computation(independent):
    w0 = torch.tensor([[0.5, -1.0, 2.0], [0.3, 0.3, -0.2]])  # [K=2, 3]
    g = torch.tensor([[0.1, 0.2, -0.3], [30.0, -40.0, 0.0]])  # member 1 has norm 50: clipped to 1
    fp = FlatParams({"w": w0.clone()})
    specs = {"w": ParamSpec((3,), "trunc", 1.0)}
    lam = 1e-2
    members = [member(lr=0.1, weight_decay=lam, independent_weight_decay=independent),
               member(lr=0.3, weight_decay=lam, independent_weight_decay=independent)]
    opt = BatchedAdamW(fp, specs, members, OptimConfig(), total_steps=10)
    stats = opt.step(g.clone(), torch.ones(2, dtype=torch.bool))
    for k, m in enumerate(members):
        gk = g[k].double()
        norm = gk.norm().item()
        gc = gk * min(1.0, 1.0 / (norm + 1e-6))
        mk, vk = 0.1 * gc, 0.05 * gc**2
        delta = (mk / 0.1) / ((vk / 0.05).sqrt() + 1e-8)  # bias-corrected Adam direction after one step
        s = 0.5  # warm-up step 0 of 2
        eta = m.lr
        wk = w0[k].double()
        if independent:  # θ ← θ − s·η·Δ − s·λ·θ
            expect = wk - s * eta * delta - s * lam * wk
        else:  # θ ← θ − s·η·(Δ + λθ)
            expect = wk - s * eta * (delta + lam * wk)
        assert torch.allclose(fp.flat[k].double(), expect, atol=1e-6), (k, fp.flat[k], expect)
        assert stats["grad_norm"][k].item() == pytest.approx(norm, rel=1e-6)
        assert stats["lr"][k].item() == pytest.approx(s * eta)


def test_frozen_member_is_untouched_and_nan_grad_freezes():
    fp = FlatParams({"w": torch.ones(3, 4)})
    opt = BatchedAdamW(fp, {"w": ParamSpec((4,), "trunc", 1.0)}, [member(), member(), member()], OptimConfig(), 10)
    g = torch.full((3, 4), 0.5)
    g[2, 0] = float("nan")
    stats = opt.step(g, torch.tensor([True, False, True]))
    assert stats["applied"].tolist() == [True, False, False]
    assert torch.equal(fp.flat[1:], torch.ones(2, 4))
    assert torch.equal(opt.m[1:], torch.zeros(2, 4)) and torch.equal(opt.v[1:], torch.zeros(2, 4))
    assert not torch.equal(fp.flat[0], torch.ones(4))


def test_mup_multiplier_and_rms_scaled_lr():
    w0 = torch.full((1, 4), 2.0)
    g = torch.full((1, 4), 0.1)
    for rms_scaled, mult, expect_scale in [(False, 0.5, 0.5), (True, 1.0, 2.0)]:
        fp = FlatParams({"w": w0.clone()})
        cfg = OptimConfig(rms_scaled_lr=rms_scaled)
        opt = BatchedAdamW(fp, {"w": ParamSpec((4,), "trunc", 1.0, lr_mult=mult)}, [member(warmup=0)], cfg, 10)
        opt.step(g.clone(), torch.ones(1, dtype=torch.bool))
        step = (2.0 - fp.flat[0, 0]).item()
        assert step == pytest.approx(0.1 * expect_scale, rel=1e-5)  # Δ = 1 for a constant gradient
