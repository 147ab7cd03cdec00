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
TEACHER_VAL_ACCURACY = "teacher_val_accuracy"
EPOCHS_TRAINED = "epochs_trained"
EPOCHS_REDONE = "epochs_redone"
"""On the sweep run: epochs trained by this driver, and how many of them a trial's run had already logged
before a restart or `--resume` (the work lost to the interruption)."""
DIVERGED = "diverged"
"""Reported (set to 1) when the loss became NaN/inf; the trial driver turns it into a failure."""
STORAGE_FULL = "storage_full"
"""Reported (set to 1) by a trial whose storage filled up: not the knobs' fault, so the trial is left
to `--resume` instead of being told to Optuna as failed."""
INPUT_ERROR = "input_error"
"""Reported (the error's one line) by a trial that failed on its input, e.g. a model name the trial's process
does not know: it would fail the same way again, so it is failed without Ray retrying it."""
IMAGES_PER_S = "images_per_s"
"""Training throughput of the epoch, all ranks together (train step only, no evaluation)."""
SETUP_S = "setup_s"
"""Seconds a worker spent from entering the loop to its first epoch (data, teachers, student, compression)."""
COMPUTE_S = "compute_s"
"""Seconds of training, evaluation and finishing so far: the trial's work, without start-up overhead."""
REESTIMATE_S = "reestimate_s"
"""Seconds of `compute_s` spent re-estimating BatchNorm statistics (`trial/batchnorm.py`), the final student's included."""
FINISH_S = "finish_s"
"""Seconds of `compute_s` spent finishing the trial: baking the compression, testing, exporting and measuring its int8 file
(its BatchNorm re-estimation is in `reestimate_s`, so compute_s = epochs + reestimate_s + finish_s)."""
NODE_ID = "node_id"
"""Reported (a string, not logged as a metric) by an in-process trial: the Ray node training it, so a run
shows where each attempt ran (a trial retried after its node was lost lists two)."""

# Estimates: computed from the torch student, not measured on any file (`compress/cost.py: static_cost`).
PARAMS = "param_count"
"""Estimate: parameters of the student (conv/linear weights, biases, norms)."""
NONZERO_PARAMS = "nonzero_params"
"""Estimate: parameters that are not zero."""
SPARSITY = "sparsity"
"""Estimate: share of zero conv/linear weights."""
BITS = "bits"
"""The weight bit-width the student was trained at (32: float); its int8 file stores every width as int8."""
SIZE_BYTES = "size_bytes"
"""Estimate: bytes of the weights packed at `bits` per value, zeros skipped with a bitmap, plus scales, biases
and norms. No shipped file stores them so: the int8 ONNX file keeps one byte per weight, zero or not."""
PLANNED_SIZE_BYTES = "planned_size_bytes"
"""Estimate, in every epoch's report: `size_bytes` of the student the trial will finish with (its compression's last
step applied to a copy at set-up), so that a scheduler can weigh cost before the trial ends (`sweep/moasha.py`)."""
MACS = "macs"
"""Estimate: multiply-accumulates of one forward pass on one sample (conv and matmul)."""
BOPS = "bops"
"""Estimate: MACs x weight bits x activation bits x density; no int8 kernel skips zeros or packs 4 bits."""

# Measured on the int8 ONNX file the trial would ship (`export_int8`, as the publish step exports its pick).
INT8_FILE_BYTES = "int8_file_bytes"
"""Measured: bytes of the trial's int8 ONNX file. The same for any bit-width and any unstructured sparsity."""
INT8_GZIP_BYTES = "int8_gzip_bytes"
"""Measured: that file gzip-compressed at level 9 (deflate): what downloading it costs, since HTTP
(`Content-Encoding: gzip`), app bundles and container layers all ship deflate. Zeros and a narrow
bit-width lower it; they do not lower the file."""
LATENCY_MS = "latency_ms"
"""Measured: median ONNX Runtime milliseconds per forward of the int8 file at batch 1 (CPU, default threads)."""
LATENCY_IQR_MS = "latency_iqr_ms"
"""Measured: interquartile range of those batch-1 timings (the spread: differences below it are noise)."""
LATENCY_BATCH_MS = "latency_batch_ms"
"""Measured: median milliseconds per forward of the int8 file at `export.latency_batch_size`, timed in rounds
interleaved with the batch-1 runs."""
LATENCY_BATCH_IQR_MS = "latency_batch_iqr_ms"
"""Measured: interquartile range of the batch timings."""
INT8_VAL_ACCURACY = "int8_val_accuracy"
"""Measured: accuracy of the int8 file in ONNX Runtime on the validation split, to hold against `best_val_accuracy`."""

ESTIMATES = (PARAMS, NONZERO_PARAMS, SPARSITY, SIZE_BYTES, MACS, BOPS)
"""Figures computed from the torch student rather than measured on the shipped file: labelled so wherever shown."""
MEASURED_COSTS = (INT8_GZIP_BYTES, INT8_FILE_BYTES, LATENCY_MS, LATENCY_BATCH_MS)
LATENCY_COSTS = (LATENCY_MS, LATENCY_BATCH_MS)
"""Measured costs that need timing rounds in ONNX Runtime (the others read the file)."""
COST_METRICS = (*MEASURED_COSTS, SIZE_BYTES, MACS, BOPS, PARAMS)
"""Figures a workflow may name as the cost to minimise or constrain."""

SELECTION_ACCURACY = INT8_VAL_ACCURACY
"""The accuracy every decision after a trial ranks by: the front, the selection policies, `sweep.stop_when`, the
leaderboard's `on_front`, the plot, the report and a warm start's front. Validation, never test: a pick made on the
test split follows its noise and reports a figure biased upwards. The int8 file's own accuracy, because that file is
what ships (its drop from the trial's is bounded by `export.tolerance`). The sampler, `sweep.accuracy_floor` and the
schedulers' rungs see `best_val_accuracy` / `val_accuracy` instead: the PyTorch student's, known at every epoch,
while the int8 file exists only once a trial ends. Test accuracy is measured for every trial and reported, the
pick's as the estimate of what ships; nothing reads it to decide."""
VAL_SAMPLES = "val_samples"
TEST_SAMPLES = "test_samples"
"""On the sweep run: images (or texts) in the validation and test splits, which set how finely accuracies can be told apart."""
KD_GAIN_POINTS = "kd_gain_points"
"""On the sweep run: the pick's test accuracy minus its labels-only control's, mean over the control's seeds, in points
(`sweep/control.py`)."""
