"""User-facing errors: one clear line on stderr and exit status 2 from the CLI."""


class PrunePrivError(ValueError):
    """Bad input from the user (profile, data file, model, layer choice)."""


class ConfigError(PrunePrivError):
    """A profile is missing, malformed, or has unknown or invalid keys."""


class DataError(PrunePrivError):
    """A data file is missing, empty or malformed."""


class ModelError(PrunePrivError):
    """A model cannot be loaded or its architecture is not supported."""


class PruningError(PrunePrivError):
    """An impossible layer choice (unknown strategy, too many layers, bad index)."""


class PrivacyConfigError(PrunePrivError):
    """Impossible privacy parameters (ε ≤ 0, δ outside (0, 1/N), clip ≤ 0)."""


class DistributedConfigError(PrunePrivError):
    """A distributed run that is not supported (non-private, or model on the wrong device)."""


class AuditError(PrunePrivError):
    """Invalid input to the privacy audit."""


class UsageError(PrunePrivError):
    """A command line that argparse cannot read (unknown flag, wrong type, missing argument)."""


class ResultsError(PrunePrivError):
    """A results folder that cannot be written, or a state file in it that cannot be read."""


class LockedError(PrunePrivError):
    """Another process is running the same profile."""


class StageError(PrunePrivError):
    """A notebook failed; the message names the notebook and the cell.

    ``user_error`` is true when the notebook raised one of prunepriv's
    bad-input errors (exit status 2), false for any other failure.
    """

    def __init__(self, message: str, user_error: bool) -> None:
        super().__init__(message)
        self.user_error = user_error


def user_error_names() -> set[str]:
    """Class names that mean bad input when a notebook raises them: every
    :class:`PrunePrivError` subclass, and a missing file."""
    names, pending = set(), [PrunePrivError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names | {"FileNotFoundError"}
