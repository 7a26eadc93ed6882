"""Where the documentation says more: the one table of doc pages that the CLI's ``--help`` and the report point to
(paths in the source tree, under ``docs/``; ``mkdocs serve`` or ``mkdocs build`` renders them offline). A test
checks that every page named here exists and is in the site's navigation."""

from __future__ import annotations

PAGES: dict[str, str] = {
    "index": "docs/index.md",
    "getting-started": "docs/getting-started.md",
    "reproduce": "docs/reproducing.md",
    "beyond": "docs/beyond.md",
    "forecast": "docs/forecasting.md",
    "monitor": "docs/monitoring.md",
    "train": "docs/sweeps.md",
    "sweep": "docs/sweeps.md",
    "config": "docs/reference/config.md",
    "reliability": "docs/reliability.md",
}
"""{topic: the page about it, relative to the repository root}."""


def page(topic: str) -> str:
    """The doc page about ``topic`` (a key of ``PAGES``)."""
    return PAGES[topic]
