"""Error types of the segment runtime.

Every error carries a message that names what was wrong (a config field, a tensor name, a session
id, a shape), so callers can show it as-is instead of a traceback.
"""

from __future__ import annotations


class SegmentInputError(ValueError):
    """Inputs handed to a segment (shape, dtype, positions, layer range) are not acceptable."""


class SessionError(KeyError):
    """A session id is unknown, already open, or its cache cannot hold the request.

    ``KeyError`` quotes its argument in ``str()``; this class returns the plain message instead.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CheckpointError(ValueError):
    """A checkpoint folder is missing files, has malformed files, or lacks/contradicts a tensor."""


class DeviceUnavailableError(RuntimeError):
    """An explicitly requested device (e.g. ``cuda``) is not available on this machine."""
