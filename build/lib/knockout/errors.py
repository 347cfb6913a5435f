"""Errors a user can fix: the CLI prints them as one line and exits with status 2."""


class KnockoutError(Exception):
    """Base of the errors reported as one line, without a traceback."""


class ConfigError(KnockoutError, ValueError):
    """A config problem, as one line: `models.cnn.dataset: 'foo' is not a key of datasets`."""


class DataError(KnockoutError):
    """A dataset problem (missing, corrupt, malformed file), as one line naming the file."""
