"""rethink: randomization tests on deep networks at scale (Zhang et al., 2017)."""

__version__ = "0.1.0"
