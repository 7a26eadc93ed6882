"""What a reader sees: the figures (``plots``, a registry of figure kinds) and the one-page HTML report
(``report``).

May import: ``proxyscale.core``, ``proxyscale.engine``, ``proxyscale.science`` and the experiments catalogue.
"""
