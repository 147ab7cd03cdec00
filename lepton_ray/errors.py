"""Exception types the CLI turns into one line and exit code 2."""


class LeptonError(Exception):
    """Base for errors caused by user input; the message names the field and the fix."""

    exit_code = 2
    outcome = None
    """Set on an error raised after a sweep's trials finished (a refused export, say): the `SweepOutcome`
    (trials, parent run id), so a caller of `lepton_ray.sweep` keeps what the trials produced."""


class TrialsFailedError(LeptonError):
    """The run itself failed: every trial of a `train` or `sweep` ended with an error."""

    exit_code = 1


class ClusterLostError(LeptonError):
    """The Ray cluster under a running sweep went away; what finished is on disk and `--resume` continues."""

    exit_code = 1


class ConfigError(LeptonError):
    """A workflow or search-space file is invalid."""


class DataError(LeptonError):
    """A data set cannot be built from what is on disk."""


class CheckpointError(LeptonError):
    """A checkpoint file is missing, corrupt or unsafe to load."""


class TrackingError(LeptonError):
    """The MLflow tracking server cannot be reached or refused a request."""


class SelectionError(LeptonError):
    """No trial satisfies the selection policy."""


class ExportError(LeptonError):
    """The exported model failed a check and was not published."""


class StorageFullError(LeptonError):
    """The sweep's storage ran out of space; what was written before is intact and `--resume` continues."""
