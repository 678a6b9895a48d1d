"""pyarrow without numpy, for `rethink status` and `rethink query`.

pyarrow (18 and later) imports numpy whenever it is installed, though it needs numpy only to
convert to and from numpy arrays (its `lib.pyx`: `try: import numpy ... except ImportError:
np = None`, a path pyarrow supports and tests). `rethink status` lists files, reads Parquet
footers and asks DuckDB; `rethink query` writes DuckDB's rows as text or Parquet: no arrays.
numpy's import was 0.07 s of the 0.49 s that `rethink status` took over 10,000 runs
(bench/store_scale.py), paid at every call of the command researchers poll."""

from __future__ import annotations

import sys


def import_pyarrow_without_numpy() -> bool:
    """Import pyarrow with numpy hidden during that import only, so that pyarrow takes its
    no-numpy path; True when it did. numpy stays importable for anything else in the process
    (pyarrow itself may load it later), but pyarrow's numpy conversions (`to_numpy`, arrays from
    numpy) fail in it: call this only where nothing converts. A no-op when either is imported
    already (a Python session, the tests): pyarrow has settled on numpy or not. A pyarrow too old
    to run without numpy (< 18) is imported the usual way."""
    if "pyarrow" in sys.modules or "numpy" in sys.modules:
        return False
    sys.modules["numpy"] = None  # type: ignore[assignment]  # `import numpy` raises ImportError
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
            del sys.modules[name]
        return False
    finally:
        del sys.modules["numpy"]
    return True
