"""Summary views over `runs` and `epochs`: what Zhang et al.'s Fig. 1 and Table 1 plot, as SQL
that anyone with `rethink query` can reuse. `rethink report` reads only these.

Each summary averages over seeds. A *setting* is every grid axis but the seed (experiment,
dataset, model, width, init_scale, regularizer, corruption, level): the grid's other keys (data,
train) hold one value per experiment, so averaging within a setting never mixes two configs.
Only finished runs count (status 'done'): a failed run has no final numbers to average, and a
running one would count as "never fit" before it had the chance to. `rethink status` and the
`runs` view still show every run.

Standard deviations are over seeds (`stddev_samp`): NULL with a single seed, which is how a plot
knows to draw no band."""

from __future__ import annotations

import duckdb

# Every grid axis but the seed: the rows a summary averages over are the seeds of one setting.
SETTING = ("experiment", "dataset", "model", "width", "init_scale", "regularizer", "corruption", "level")
PROBES = ("act_sparsity", "jacobian_norm", "grad_sqnorm", "functional_dim", "param_norm")
VIEWS = ("memorization", "fit_time", "gaps", "probes")

_KEYS = ", ".join(SETTING)
_R_KEYS = ", ".join(f"r.{k}" for k in SETTING)

# The finished runs, once per (experiment, run): a run shared by two experiments counts in each.
_DONE = f"SELECT run_id, {_KEYS} FROM runs WHERE status = 'done'"


def _mean_std(column: str, source: str = "") -> str:
    """`avg(x) AS x, stddev_samp(x) AS x_std`: the mean over seeds and its spread."""
    return f"avg({source}{column}) AS {column}, stddev_samp({source}{column}) AS {column}_std"


# Train accuracy per epoch (Fig. 1a's curves), with the loss and test accuracy beside it, and the
# accuracy on the corrupted and clean subsets: how much of the noise has been memorized.
MEMORIZATION_SQL = f"""
CREATE VIEW memorization AS
SELECT {_R_KEYS}, e.epoch,
       count(*) AS seeds,
       avg(e.step) AS step,
       {_mean_std("train_acc", "e.")},
       min(e.train_acc) AS train_acc_min, max(e.train_acc) AS train_acc_max,
       {_mean_std("train_loss", "e.")},
       min(e.train_loss) AS train_loss_min, max(e.train_loss) AS train_loss_max,
       avg(e.train_acc_corrupted) AS train_acc_corrupted,
       avg(e.train_acc_clean) AS train_acc_clean,
       avg(e.train_acc_true) AS train_acc_true,
       {_mean_std("test_acc", "e.")},
       {_mean_std("test_loss", "e.")}
FROM epochs e
JOIN ({_DONE}) r ON r.run_id = e.run_id
GROUP BY {_R_KEYS}, e.epoch
ORDER BY {_R_KEYS}, e.epoch
"""

# Epochs and steps to fit (Fig. 1b). Means are over the runs that fit; those that never reached
# the threshold within their `epochs` (the training budget) are counted in `never_fit`, not
# averaged in as some made-up number. The ratio is
# to the uncorrupted run ('none', else labels/label_noise at level 0) of the same experiment,
# data, model and regularizer (Zhang's slowdown).
_SAME_BASE = " AND ".join(f"b.{k} IS NOT DISTINCT FROM s.{k}" for k in SETTING if k not in ("corruption", "level"))
FIT_TIME_SQL = f"""
CREATE VIEW fit_time AS
WITH per_setting AS (
    SELECT {_KEYS}, fit_threshold,
           max(epochs) AS epochs,
           count(*) AS runs,
           count(epochs_to_fit) AS fitted,
           count(*) - count(epochs_to_fit) AS never_fit,
           {_mean_std("epochs_to_fit")},
           {_mean_std("steps_to_fit")}
    FROM runs
    WHERE status = 'done'
    GROUP BY {_KEYS}, fit_threshold
),
baseline AS (               -- the uncorrupted run: 'none', else a label corruption at level 0
    SELECT * FROM per_setting
    WHERE corruption = 'none' OR (corruption IN ('labels', 'label_noise') AND level = 0)
    QUALIFY row_number() OVER (
        PARTITION BY {", ".join(k for k in SETTING if k not in ("corruption", "level"))}, fit_threshold
        ORDER BY (corruption = 'none') DESC, corruption) = 1
)
SELECT s.*,
       s.epochs_to_fit / b.epochs_to_fit AS epochs_ratio,
       s.steps_to_fit / b.steps_to_fit AS steps_ratio
FROM per_setting s
LEFT JOIN baseline b
  ON {_SAME_BASE} AND b.fit_threshold IS NOT DISTINCT FROM s.fit_threshold
ORDER BY {", ".join(f"s.{k}" for k in SETTING)}
"""

# Final train and test accuracy and their gap (Table 1's layout), best test accuracy beside them.
GAPS_SQL = f"""
CREATE VIEW gaps AS
SELECT {_KEYS},
       count(*) AS seeds,
       avg(epochs_done) AS epochs_done,
       {_mean_std("train_acc")},
       {_mean_std("test_acc")},
       {_mean_std("gap")},
       avg(best_test_acc) AS best_test_acc
FROM (SELECT {_KEYS}, epochs_done, final_train_acc AS train_acc, final_test_acc AS test_acc,
             final_gap AS gap, best_test_acc
      FROM runs
      WHERE status = 'done' AND final_train_acc IS NOT NULL)
GROUP BY {_KEYS}
ORDER BY {_KEYS}
"""

# Probe curves: only the epochs where some probe was measured (every `probe_every` epochs).
PROBES_SQL = f"""
CREATE VIEW probes AS
SELECT {_R_KEYS}, e.epoch,
       count(*) AS seeds,
       avg(e.step) AS step,
       {", ".join(_mean_std(p, "e.") for p in PROBES)}
FROM epochs e
JOIN ({_DONE}) r ON r.run_id = e.run_id
WHERE coalesce({", ".join(f"e.{p}" for p in PROBES)}) IS NOT NULL
GROUP BY {_R_KEYS}, e.epoch
ORDER BY {_R_KEYS}, e.epoch
"""


def create_summaries(con: duckdb.DuckDBPyConnection) -> None:
    """Add the summary views to a connection that already has `runs` and `epochs` (views.connect).
    Views cost nothing until queried."""
    for sql in (MEMORIZATION_SQL, FIT_TIME_SQL, GAPS_SQL, PROBES_SQL):
        con.execute(sql)
