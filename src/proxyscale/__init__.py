"""proxyscale: small-scale proxies for large-scale Transformer training instabilities (Wortsman et al. 2023)."""

from .config import ConfigError, GroupConfig, Member, load

__all__ = ["ConfigError", "GroupConfig", "Member", "load"]
__version__ = "0.1.0"
