"""The documentation (issue 26): the README is a landing page whose first two commands are the main job and the
test command; the site under docs/ builds in strict mode (broken links, anchors, missing pages and docstring errors
fail); its generated parts are current; every example loads; the CLI's --help and the report point to pages that
exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxyscale.core import config
from proxyscale.jobs import forecast
from proxyscale.jobs.docs import config_reference
from proxyscale.outputs.links import PAGES
from proxyscale.runs import sweep

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)]


def test_the_readme_is_a_landing_page_whose_first_commands_are_the_main_job_and_the_tests():
    assert len(README.splitlines()) <= 160, "the README is a landing page (about 150 lines); details go to docs/"
    main_job, tests = _bash_blocks(README)[:2]
    assert main_job.startswith("python3 -m venv .venv") and "pip install -e ." in main_job
    assert "proxyscale reproduce fig1" in main_job
    assert tests.startswith("python3 -m venv .venv") and tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == tests, ".ci/run must call exactly the README's test command"


def test_the_config_reference_page_is_current():
    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    assert config_reference() in page, "run: python -m proxyscale.jobs.docs and paste into docs/reference/config.md"


def _nav_pages(nav: list) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_page_the_cli_and_the_report_name_exists_and_is_in_the_navigation(capsys):
    site = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = {f"docs/{p}" for p in _nav_pages(site["nav"])}
    for topic, path in PAGES.items():
        assert (ROOT / path).is_file(), f"outputs.links.PAGES[{topic!r}] = {path}: no such page"
        assert path in nav, f"{path} is not in mkdocs.yml's nav"
    from proxyscale.cli import main

    named = set()
    for argv in ([], ["train"], ["sweep"], ["list"], ["reproduce"], ["forecast"], ["report"]):
        assert main([*argv, "--help"]) == 0
        named |= set(re.findall(r"docs/[\w/.-]+\.md", capsys.readouterr().out))
    assert {PAGES["index"], PAGES["forecast"], PAGES["reproduce"], PAGES["sweep"], PAGES["config"]} <= named
    assert all((ROOT / p).is_file() for p in named), named


def test_the_report_points_to_pages_that_exist(tmp_path):
    from proxyscale.outputs import report

    note = report._docs_note()
    named = re.findall(r"docs/[\w/.-]+\.md", note)
    assert len(named) >= 3 and all((ROOT / p).is_file() for p in named), named


def test_the_docs_build_in_strict_mode(tmp_path):
    """``mkdocs build --strict``: a broken link or anchor, a page missing from the nav, or a docstring the API
    reference cannot render fails the build (mkdocs.yml's ``validation``)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about its successor
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api.html").read_text()  # use_directory_urls: false (opens from disk)
    for name in ("attach", "trainer_callback", "train_group", "lr_sensitivity", "run"):
        assert name in api, f"the API reference lacks {name}"


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_loads(path):
    """Each example as its command reads it (examples/README.md): a forecast target builds its ladder, a sweep spec
    expands into valid groups, a group file loads; nothing trains."""
    raw = yaml.safe_load(path.read_text())
    if path.name.startswith("target"):
        target = forecast.load_target(str(path))
        assert sweep.expand(forecast.ladder_spec(target, "micro"))
    elif {"base", "sizes", "axes"} & set(raw):
        assert sweep.expand(sweep.load_spec(str(path)))
    else:
        assert config.load(str(path)).member_list()


def test_the_examples_readme_names_every_example_and_its_command():
    text = (ROOT / "examples" / "README.md").read_text()
    for path in sorted((ROOT / "examples").iterdir()):
        if path.suffix in (".yaml", ".py"):
            assert path.name in text, f"examples/README.md does not say what {path.name} is for"
    assert "proxyscale forecast" in text and "proxyscale sweep" in text and "proxyscale train" in text
