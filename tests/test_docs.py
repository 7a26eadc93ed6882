"""The README's configuration reference is generated from the config's docstrings (``proxyscale.docs``)."""

from pathlib import Path

from proxyscale.docs import config_reference


def test_readme_config_reference_is_current():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert config_reference() in readme, "run: python -m proxyscale.docs and paste into README.md"
