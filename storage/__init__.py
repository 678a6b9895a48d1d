"""Where results live and how they are read: layout, atomic writes, Parquet, DuckDB. No torch."""
