"""The schema of each Parquet table in a store, declared once. Columns are plain numbers and
strings (no torch here); new columns are only ever added, so old and new files mix
(`union_by_name`)."""

from __future__ import annotations

import pyarrow as pa

# One row per run of an experiment: the run's resolved config, flattened for SQL.
EXPERIMENT_RUNS = pa.schema([
    ("experiment", pa.string()),
    ("run_id", pa.string()),
    ("dataset", pa.string()),
    ("train_size", pa.int64()),
    ("test_size", pa.int64()),
    ("crop", pa.int64()),
    ("whiten", pa.bool_()),
    ("model", pa.string()),
    ("width", pa.float64()),
    ("init_scale", pa.float64()),
    ("corruption", pa.string()),
    ("level", pa.float64()),
    ("regularizer", pa.string()),  # readable label, e.g. "weight_decay=0.0005+augment"
    ("weight_decay", pa.float64()),
    ("dropout", pa.float64()),
    ("augment", pa.bool_()),
    ("early_stopping", pa.int64()),
    ("label_smoothing", pa.float64()),
    ("batch_norm", pa.bool_()),
    ("seed", pa.int64()),
    ("epochs", pa.int64()),
    ("batch_size", pa.int64()),
    ("lr", pa.float64()),
    ("momentum", pa.float64()),
    ("lr_decay", pa.float64()),
    ("optimizer", pa.string()),
    ("fit_threshold", pa.float64()),
    ("config", pa.string()),  # the whole resolved config as JSON
])

# One row per run: where it stands. Rewritten whole on every change.
STATUS = pa.schema([
    ("run_id", pa.string()),
    ("status", pa.string()),  # pending | running | done | failed
    ("attempts", pa.int64()),
    ("epochs_done", pa.int64()),
    ("resumed_from", pa.int64()),  # epoch of the checkpoint the latest attempt started from
    ("stop_reason", pa.string()),  # completed | early_stopped | diverged | error | cancelled
    ("error", pa.string()),
    ("host", pa.string()),
    ("pid", pa.int64()),
    ("started_at", pa.timestamp("ms", tz="UTC")),
    ("updated_at", pa.timestamp("ms", tz="UTC")),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    # provenance of the latest attempt (tasks/provenance.py); null in stores from before it
    ("rethink_version", pa.string()),
    ("git_commit", pa.string()),  # HEAD of the checkout rethink ran from, "-dirty" if changed
    ("torch_version", pa.string()),
    ("cuda_version", pa.string()),
    ("device", pa.string()),  # "cpu", or e.g. "cuda:0 NVIDIA H200"
    # what a running run is doing and its latest accuracies, for progress lines; null in older stores
    ("phase", pa.string()),  # loading | training | probing (while running)
    ("train_acc", pa.float64()),
    ("test_acc", pa.float64()),
])

# One row per run per epoch (tasks.train.EPOCH_COLUMNS) plus the probes when measured.
EPOCHS = pa.schema([
    ("run_id", pa.string()),
    ("epoch", pa.int64()),
    ("step", pa.int64()),
    ("lr", pa.float64()),
    ("train_loss", pa.float64()),
    ("train_acc", pa.float64()),
    ("train_acc_corrupted", pa.float64()),
    ("train_acc_clean", pa.float64()),
    ("train_acc_true", pa.float64()),
    ("test_loss", pa.float64()),
    ("test_acc", pa.float64()),
    ("gap", pa.float64()),
    ("val_loss", pa.float64()),
    ("val_acc", pa.float64()),
    ("wall_s", pa.float64()),
    ("examples_per_s", pa.float64()),
    ("act_sparsity", pa.float64()),  # fraction of ReLU outputs at zero, all hidden layers
    ("act_sparsity_layers", pa.string()),  # JSON list: the same per hidden layer, input to output
    ("jacobian_norm", pa.float64()),
    ("grad_sqnorm", pa.float64()),
    ("functional_dim", pa.float64()),
    ("functional_dim_tol", pa.float64()),  # singular values above this count toward the rank
    ("param_norm", pa.float64()),
])


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) -> a table of exactly `schema`: missing keys are null, unknown keys refused."""
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
