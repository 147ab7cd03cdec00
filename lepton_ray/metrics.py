"""Metric names shared by the trial, the search, the Pareto step and the reports.

These strings are stable: MLflow leaderboards and saved sweeps depend on them.
"""

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_ACCURACY = "val_accuracy"
VAL_LOSS = "val_loss"
TEST_ACCURACY = "test_accuracy"
BEST_VAL_ACCURACY = "best_val_accuracy"
"""Validation accuracy of the student a trial ships: what the search maximises (test is for reporting)."""
BEST_EPOCH = "best_epoch"
RESTARTS = "restarts"
"""Times the trial resumed from its own checkpoint (worker failure, driver --resume)."""
TEACHER_TEST_ACCURACY = "teacher_test_accuracy"
EPOCHS_TRAINED = "epochs_trained"
EPOCHS_REDONE = "epochs_redone"
"""On the sweep run: epochs trained by this driver, and how many of them a trial's run had already logged
before a restart or `--resume` (the work lost to the interruption)."""
DIVERGED = "diverged"
"""Reported (set to 1) when the loss became NaN/inf; the trial driver turns it into a failure."""
STORAGE_FULL = "storage_full"
"""Reported (set to 1) by a trial whose storage filled up: not the knobs' fault, so the trial is left
to `--resume` instead of being told to Optuna as failed."""
IMAGES_PER_S = "images_per_s"
"""Training throughput of the epoch, all ranks together (train step only, no evaluation)."""
SETUP_S = "setup_s"
"""Seconds a worker spent from entering the loop to its first epoch (data, teachers, student, compression)."""
COMPUTE_S = "compute_s"
"""Seconds of training, evaluation and finishing so far: the trial's work, without start-up overhead."""

PARAMS = "params"
NONZERO_PARAMS = "nonzero_params"
SPARSITY = "sparsity"
BITS = "bits"
SIZE_BYTES = "size_bytes"
MACS = "macs"
BOPS = "bops"
LATENCY_MS = "latency_ms"
LATENCY_BATCH_MS = "latency_batch_ms"

COST_METRICS = (SIZE_BYTES, MACS, BOPS, LATENCY_MS, PARAMS)
"""Figures a workflow may name as the cost to minimise."""

ACCURACY_METRIC = TEST_ACCURACY
"""The accuracy the Pareto front and the selector rank by."""
