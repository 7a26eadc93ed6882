"""Every experiment file is valid at every scale: its spec expands, its checks and figures exist and take its args."""

import inspect

import pytest

from proxyscale import claims, reproduce, sweep

KINDS = {"lr_vs_loss", "sensitivity_vs_n", "over_steps", "metric_vs", "prediction"}
PAPER_ITEMS = {"fig1", "fig2", "fig3", "fig5", "fig6", "fig7", "fig8", "fig9", "fig10", "fig11", "fig12",
               "e1", "e5", "e7", "e8", "e9", "e10", "e11", "e14", "c1"}


def test_every_paper_experiment_is_listed():
    assert PAPER_ITEMS <= set(reproduce.names())


@pytest.mark.parametrize("name", reproduce.names())
def test_experiment_file_is_valid(name):
    exp = reproduce.load(name)
    assert exp["name"] == name and exp["title"] and exp["paper"]
    assert set(exp["scales"]) == {"micro", "small", "paper"}
    for scale, body in exp["scales"].items():
        assert body["why"], (name, scale)
        groups = sweep.expand({"name": name, **body["spec"]})
        assert groups, (name, scale)
        if scale == "micro":
            for g in groups:
                assert g.cfg.model.width <= 256 and g.cfg.train.steps <= 600, (name, g.labels)
    for fig in exp["figures"]:
        assert fig["kind"] in KINDS
    assert exp["claims"]
    for c in exp["claims"]:
        fn = claims.CHECKS[c["check"]]
        inspect.signature(fn).bind(None, **c.get("args", {}))  # the arguments fit the check
