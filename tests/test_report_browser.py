"""The HTML report renders in a real headless browser and shows its figures (issue 3 §4)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from proxyscale.outputs import report
from proxyscale.core import store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def fake_experiment(root: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = root / "figX"
    (exp / "figures").mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.add_patch(plt.Rectangle((0, 0), 1, 1, color=(1.0, 0.0, 0.0)))  # a pure red figure to find on screen
    ax.set_axis_off()
    fig.savefig(exp / "figures" / "red.png", dpi=100)
    plt.close(fig)
    store.write_json(exp / "verdicts.json", {
        "name": "figX", "title": "A test experiment", "paper": "", "scale": "micro", "why": "", "seconds": 1.0,
        "command": "proxyscale reproduce figX", "figures": ["figures/red.png"],
        "verdicts": [{"claim": "red is shown", "verdict": "reproduced", "detail": "by construction"}],
        "sensitivity": [{"label.size": "d32", "lr_sensitivity": 0.1}]})


def test_report_renders_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("LOUD SKIP: Chromium is not installed (Debian packages chromium, chromium-driver; .ci/run "
                    "installs them) - the report was NOT checked in a browser")
    fake_experiment(tmp_path)
    page = report.build(tmp_path)
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1200,1400", f"--screenshot={shot}",
           page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]  # [H, W, 3] floats in [0, 1]
    red = (img[..., 0] > 0.9) & (img[..., 1] < 0.1) & (img[..., 2] < 0.1)
    assert red.sum() > 20_000, f"the figure is not visible in the screenshot ({int(red.sum())} red pixels)"
    assert np.mean(img) > 0.5  # a light page, not a blank or error screen
