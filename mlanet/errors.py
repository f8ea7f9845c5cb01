"""Exception types raised by the library.

Every error a user can cause names the input it is about; CLIs catch :class:`MLANetError`
and print its message instead of a traceback.
"""

from __future__ import annotations


class MLANetError(Exception):
    """Base class of all errors the project raises on purpose."""


class AssetError(MLANetError):
    """An input asset (archive, OBJ, .mat, face-model file) is missing, corrupt or unsuitable."""


class FaceModelNotFoundError(AssetError):
    """No face-model file where one was expected; the message says how to build one."""


class IncompatibleFormatError(AssetError):
    """A file was written by a different, incompatible format version."""


class ChecksumError(AssetError):
    """A file's content does not match its recorded checksum."""


class OfflineError(MLANetError):
    """A download was needed but the network could not be reached."""


class NonFiniteOutputError(MLANetError):
    """A network produced NaN or infinite parameters (damaged weights or a broken export)."""


class ConfigError(MLANetError, ValueError):
    """A configuration key or value is invalid, or does not fit the data or face model it is used with (names the
    key). The one class for both: :mod:`mlanet.config` raises it for unknown keys and wrong types."""
