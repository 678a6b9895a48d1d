"""rethink: randomization tests on deep networks at scale (Zhang et al., 2017).

`rethink.open_store(PATH_OR_URI)` reads a store from Python (storage/results.py). It is loaded on
first use, so `import rethink` stays instant and pulls in neither torch, Ray nor DuckDB.
`rethink.RethinkError` is the root of every refusal (errors.py, tiny: imported eagerly)."""

from __future__ import annotations

from typing import Any

from rethink.errors import RethinkError

__version__ = "0.1.0"
__all__ = ["RethinkError", "open_store"]

_LAZY = {"open_store": "rethink.storage.results"}  # public name -> the module that defines it


def __getattr__(name: str) -> Any:
    """Import a public name's module only when the name is first used (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rethink' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
