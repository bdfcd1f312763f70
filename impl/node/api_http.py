"""The lead's HTTP/1.1 protocol: uvicorn's h11 protocol whose own refusals are OpenAI-shaped too.

A request the HTTP parser cannot accept (a header section over its 16 KiB limit, a request target
with raw non-ASCII bytes, a malformed request line) never reaches the ASGI app; uvicorn answers it
with a plain-text 400. ``OpenAIH11Protocol`` answers it with the same status and an OpenAI-shaped
JSON error body, then closes the connection, as uvicorn does.
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from verisplit.impl.node.api_limits import error_body


class OpenAIH11Protocol(H11Protocol):
    """``H11Protocol`` with an OpenAI-shaped body on the parser's 400 (pass as ``uvicorn.Config(http=...)``)."""

    def send_400_response(self, msg: str) -> None:
        body = error_body(f"malformed HTTP request: {msg}", "invalid_http_request")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()
