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
