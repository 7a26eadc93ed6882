import math

import pytest
import torch

from proxyscale.core.config import ModelConfig
from proxyscale.engine.model import ProxyGPT, count_params, init_params, param_specs


def test_init_effective_std_matches_paper():
    cfg = ModelConfig(width=128, depth=2, heads=4)
    params = init_params(cfg, 256, seeds=[0])
    # embedding N(0, 1/d); every other matrix truncated normal with *effective* std 1/sqrt(fan_in) (paper §3.1)
    assert params["embed"].std().item() == pytest.approx(1 / math.sqrt(128), rel=0.03)
    for name in ("layers.0.wq", "layers.1.w1", "unembed"):
        assert params[name].std().item() == pytest.approx(1 / math.sqrt(128), rel=0.03), name
    w2 = params["layers.0.w2"]
    assert w2.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.03)
    assert w2.abs().max().item() <= 2 / math.sqrt(512) / 0.8796 + 1e-6  # truncated at ±2 raw std
    assert torch.all(params["layers.0.ln1"] == 1)


def test_param_count_excludes_embedding_and_output():
    for d, depth in [(64, 2), (256, 3), (512, 6)]:
        cfg = ModelConfig(width=d, depth=depth, heads=d // 32)
        norms = depth * (2 * d + 2 * 32) + d  # ln1, ln2, q/k norm scales (per head dim), final norm
        assert count_params(cfg) == 12 * depth * d * d + norms
    # the paper's 2.4M model is d=256, L=3
    assert count_params(ModelConfig(width=256, depth=3, heads=8)) / 1e6 == pytest.approx(2.4, abs=0.05)


def test_members_draw_init_from_their_own_seed():
    cfg = ModelConfig(width=32, depth=1, heads=2)
    both = init_params(cfg, 256, seeds=[3, 7])
    alone = init_params(cfg, 256, seeds=[7])
    for name in both:
        assert torch.equal(both[name][1], alone[name][0])
    assert not torch.equal(both["embed"][0], both["embed"][1])


@pytest.mark.parametrize("variant", [
    {}, {"qk_layernorm": "off"}, {"qk_layernorm": "width"}, {"attention": "pointwise"}, {"kappa": 100.0},
    {"norm": "rmsnorm", "mup": "full"}, {"tied_embeddings": True},
])
def test_causal(variant):
    cfg = ModelConfig(width=32, depth=2, heads=2, **variant)
    params = init_params(cfg, 256, seeds=[0, 1])
    model = ProxyGPT(cfg, 256, 16, torch.device("cpu"))
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % 256
    a, b = model.forward(params, x)[0], model.forward(params, y)[0]
    assert torch.allclose(a[:, :, :9], b[:, :, :9], atol=0, rtol=0)  # positions before 9 cannot see it
    assert not torch.allclose(a[:, :, 9:], b[:, :, 9:])


def test_mup_multipliers_and_zero_queries():
    specs = param_specs(ModelConfig(width=512, depth=1, heads=16, mup="full", mup_base_width=256), 256)
    assert specs["layers.0.wq"].init == "zeros"
    assert specs["layers.0.w1"].lr_mult == pytest.approx(0.5)
    assert specs["layers.0.w2"].lr_mult == pytest.approx(256 / 2048)
    assert specs["unembed"].std == pytest.approx(math.sqrt(256) / 512)
    assert specs["embed"].lr_mult == 1.0
    assert not specs["layers.0.ln1"].decay


def test_kappa_transplant_pins_the_logit_scale():
    cfg = ModelConfig(width=32, depth=1, heads=2, kappa=50.0)
    model = ProxyGPT(cfg, 256, 16, torch.device("cpu"))
    _, stats = model.forward(init_params(cfg, 256, [0]), torch.randint(0, 256, (2, 16)), record=True)
    assert 5.0 < stats["attn_logit_max"][0, 0].item() <= 50.0 + 1e-3  # κ·cos, at most κ
