"""Exceptions for bad input.

Each carries a one-line message that says what is wrong and what is expected;
entry points print it (no traceback) and exit with status 2.
"""


class DeephashError(Exception):
    """Base class: a user-facing error with a one-line message."""


class ConfigError(DeephashError, ValueError):
    """A config value or CLI argument is invalid."""


class DataError(DeephashError, ValueError):
    """A dataset on disk is missing, malformed or unreadable."""


class IndexFormatError(DeephashError, ValueError):
    """A saved index is missing files, truncated or does not match the model."""
