"""gRPC metadata the lead sends when it opens a provider's ``Steps`` stream.

Invariant: a stream that carries ``STREAM_SESSION_KEY`` is bound to that session the moment it starts,
so the provider closes the session when the stream ends for any reason (lead gone, request refused
elsewhere, client disconnect), even if no frame was ever sent. ``STREAM_FIRST_STEP_KEY`` numbers the
first step of a replacement's session (its replay step, rule R2 of ``verisplit.spec.recovery``).
"""

from __future__ import annotations

STREAM_SESSION_KEY = "verisplit-session"
STREAM_FIRST_STEP_KEY = "verisplit-first-step"


def stream_metadata(session_id: str, first_step: int = 0) -> tuple[tuple[str, str], ...]:
    """The metadata of a ``Steps`` stream for ``session_id`` starting at step ``first_step``."""
    return ((STREAM_SESSION_KEY, session_id), (STREAM_FIRST_STEP_KEY, str(first_step)))
