"""The project's error types for user errors: each message is one line that says what to do.

Entry points (``experiments/``) print these as one line and exit with status 2; any other
exception is a bug and keeps its traceback.
"""


class FlowsError(Exception):
    """Base class of the errors a user can cause and fix (config, data, checkpoint, training)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(FlowsError, ValueError):
    """A config value or combination that cannot work (unknown model, missing field, ...)."""


class DatasetError(FlowsError, ValueError):
    """A dataset cannot be loaded as asked."""


class CheckpointError(FlowsError, RuntimeError):
    """A checkpoint or workdir cannot be used as asked."""


class TrainingError(FlowsError, RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps)."""
