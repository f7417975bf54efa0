"""User-facing errors.

Every error a user can cause with bad input (a config, a checkpoint, a data file, a prompt) is one
of these. The CLI catches `ParcaeError` once and prints it as a single line with exit code 2;
library callers receive the exception itself.
"""


class ParcaeError(Exception):
    """Base class of every user-facing parcae error."""


class ConfigError(ParcaeError, ValueError):
    """A model, training or data configuration value is invalid.

    `field` and `reason` are set when one field is at fault, so that callers that know the
    field under another name (an official config, a YAML key) can restate the error.
    """

    def __init__(self, message: str, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.field = field
        self.reason = reason


class CheckpointError(ParcaeError):
    """A checkpoint directory or file is missing, unreadable or does not match the model."""


class DataError(ParcaeError):
    """An input corpus, tokenizer or prepared shard is missing, malformed or inconsistent."""


class PromptError(ParcaeError, ValueError):
    """A generation prompt or request is invalid (empty, too long, out-of-vocabulary ids)."""


class TrainingError(ParcaeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class MissingDependencyError(ParcaeError, ImportError):
    """An optional package that a feature needs is not installed; the message names the extra.

    Also an ImportError, so that callers probing an optional module with `except ImportError`
    see it as one.
    """

    def __init__(self, package: str, feature: str, extra: str = "hf"):
        super().__init__(
            f"{feature} needs the optional package '{package}': pip install 'parcae[{extra}]'",
            name=package,
        )
