"""The lead's in-memory request views (``GET /v1/requests/{id}`` answers from here first).

Invariant: at most ``max_count`` views and (when ``max_bytes`` is set) at most that many bytes of
their JSON (measured when put) are held, oldest evicted first, except that the newest view always
stays; an evicted view is read back from the ``RequestStore`` on demand.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

INFO_MEMORY_BYTES = 64 << 20  # the most request-view JSON kept in memory once a byte bound is configured


class InfoCache(OrderedDict[str, dict[str, Any]]):
    """Request id -> public view, bounded in count and bytes (see the module docstring)."""

    def __init__(self, max_count: int, max_bytes: int | None = None) -> None:
        super().__init__()
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._sizes: dict[str, int] = {}
        self._total = 0

    def put(self, request_id: str, info: dict[str, Any]) -> None:
        """Hold ``info`` as the newest view, then evict the oldest while over a bound."""
        self._total -= self._sizes.pop(request_id, 0)
        self[request_id] = info
        self.move_to_end(request_id)
        self._sizes[request_id] = len(json.dumps(info, default=str))
        self._total += self._sizes[request_id]
        while len(self) > 1 and (len(self) > self.max_count or
                                 (self.max_bytes is not None and self._total > self.max_bytes)):
            old, _ = self.popitem(last=False)
            self._total -= self._sizes.pop(old, 0)

    def remeasure(self, request_id: str) -> None:
        """Re-measure a view that grew after ``put`` (hooks add audits and settlement to it), then
        evict as ``put`` does, so the byte bound holds for views as they are now."""
        info = self.get(request_id)
        if info is not None:
            self.put(request_id, info)
