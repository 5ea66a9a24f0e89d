"""Small helpers shared by every stage: errors, atomic file writes, logging."""

from deephash.utils.errors import ConfigError, DataError, DeephashError, IndexFormatError
from deephash.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, update_json
from deephash.utils.logging import get_logger

__all__ = [
    "DeephashError",
    "ConfigError",
    "DataError",
    "IndexFormatError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "update_json",
    "get_logger",
]
