"""Errors of the storage layer a user can cause, each named by its condition."""

from __future__ import annotations

from rethink.errors import RethinkError


class StoreError(RethinkError):
    """A store that cannot be opened or written as asked."""


class DamagedFileError(StoreError):
    """A file in the store that cannot be read back (truncated or not Parquet)."""


class NotAStoreError(RethinkError):
    """The path given as a store holds no rethink store."""


class QueryError(RethinkError):
    """SQL that DuckDB cannot parse or run, or a query option that makes no sense."""


class ReadOnlyError(RethinkError):
    """SQL that would write, load or reach outside the store: `rethink query` only reads."""
