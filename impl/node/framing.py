"""Tensor chunking and wire conversions shared by the provider and the lead.

Invariants:
- ``chunk_tensor`` splits canonical bytes into pieces of at most ``CHUNK_BYTES`` in order;
  ``Reassembler`` accepts exactly such a sequence and returns the identical bytes, so digests
  computed on either side of the wire are over the same bytes.
- Every malformed piece raises ``FramingError`` whose message starts with the offending field
  (``input.index``, ``output.total_bytes``...), so servers can answer INVALID_ARGUMENT with it.
- Message size limits are explicit and identical on both sides (``grpc_options``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import grpc
from nacl.signing import SigningKey
from google.protobuf.message import DecodeError

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.records.keys import SignedFields, sign_session
from verisplit.spec.commitment import BoundaryCommitment

CHUNK_BYTES = 1 << 20  # tensors above 1 MiB travel in several messages
MAX_MESSAGE_BYTES = 4 * CHUNK_BYTES  # hard gRPC limit per message (a chunk + small metadata fits easily)
DEFAULT_MAX_TENSOR_BYTES = 1 << 30  # largest reassembled tensor accepted by default (1 GiB)


class FramingError(ValueError):
    """A frame is malformed; the message names the field (e.g. ``input.count``)."""


def grpc_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Options for every channel and server (one list, so both ends agree): explicit send and receive
    limits; keepalive that tolerates idle links (clients ping every 30 s even without calls, servers
    accept pings as often as every 10 s, so an idle channel is never answered GOAWAY too_many_pings);
    and no port sharing (``grpc.so_reuseport`` = 0: a second server on a used port fails to bind)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.min_time_between_pings_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]


def chunk_tensor(blob: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[pb.TensorChunk]:
    """Split canonical tensor bytes into ordered ``TensorChunk`` pieces (at least one)."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes: must be >= 1")
    total = len(blob)
    count = max(1, -(-total // chunk_bytes))
    view = memoryview(blob)
    return [pb.TensorChunk(index=i, count=count, total_bytes=total, data=bytes(view[i * chunk_bytes:(i + 1) * chunk_bytes]))
            for i in range(count)]


class Reassembler:
    """Collects the pieces of one tensor at a time; ``add`` returns the bytes when complete."""

    def __init__(self, field: str, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> None:
        self.field = field
        self.max_tensor_bytes = max_tensor_bytes
        self._parts: list[bytes] = []
        self._count = 0
        self._total = 0
        self._received = 0

    @property
    def in_progress(self) -> bool:
        return bool(self._parts)

    def add(self, chunk: pb.TensorChunk) -> bytes | None:
        """Accept the next piece; returns the whole tensor after the last piece, else None."""
        f = self.field
        if not self._parts:
            if chunk.count < 1:
                raise FramingError(f"{f}.count: must be >= 1, got {chunk.count}")
            if chunk.total_bytes > self.max_tensor_bytes:
                raise FramingError(f"{f}.total_bytes: {chunk.total_bytes} exceeds the limit {self.max_tensor_bytes}")
            self._count, self._total = chunk.count, chunk.total_bytes
        if chunk.index != len(self._parts):
            raise FramingError(f"{f}.index: expected piece {len(self._parts)}, got {chunk.index}")
        if chunk.count != self._count:
            raise FramingError(f"{f}.count: changed from {self._count} to {chunk.count} inside one tensor")
        if chunk.total_bytes != self._total:
            raise FramingError(f"{f}.total_bytes: changed from {self._total} to {chunk.total_bytes} inside one tensor")
        self._received += len(chunk.data)
        if self._received > self._total:
            raise FramingError(f"{f}.data: {self._received} bytes received, total_bytes says {self._total}")
        self._parts.append(chunk.data)
        if chunk.index + 1 < self._count:
            return None
        if self._received != self._total:
            raise FramingError(f"{f}.data: {self._received} bytes received, total_bytes says {self._total}")
        blob = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts, self._received = [], 0
        return blob


def commitment_to_pb(c: BoundaryCommitment) -> pb.Commitment:
    """Wire form of a commitment (same fields, same values)."""
    return pb.Commitment(
        protocol_version=c.protocol_version, model_id=c.model_id, weights_digest=c.weights_digest,
        request_id=c.request_id, step=c.step, segment_index=c.segment_index, first_layer=c.first_layer,
        end_layer=c.end_layer, first_position=c.first_position, num_positions=c.num_positions,
        input_digest=c.input_digest, output_digest=c.output_digest, signer=c.signer, signature=c.signature,
        dtype=c.dtype, audit_seed_commitment=c.audit_seed_commitment)


def commitment_from_pb(m: pb.Commitment) -> BoundaryCommitment:
    """Spec form of a wire commitment (no validation here: ``check_link`` judges it)."""
    return BoundaryCommitment(
        protocol_version=m.protocol_version, model_id=m.model_id, weights_digest=bytes(m.weights_digest),
        request_id=m.request_id, step=m.step, segment_index=m.segment_index, first_layer=m.first_layer,
        end_layer=m.end_layer, first_position=m.first_position, num_positions=m.num_positions,
        input_digest=bytes(m.input_digest), output_digest=bytes(m.output_digest), signer=bytes(m.signer),
        signature=bytes(m.signature), dtype=m.dtype, audit_seed_commitment=bytes(m.audit_seed_commitment))


def parse_endpoint(url: str) -> tuple[str, bool | None]:
    """``grpc://h:p`` -> (h:p, False), ``grpcs://h:p`` -> (h:p, True), ``h:p`` -> (h:p, None = caller decides)."""
    text = url.strip()
    for prefix, tls in (("grpcs://", True), ("grpc://", False)):
        if text.startswith(prefix):
            text, scheme_tls = text[len(prefix):], tls
            break
    else:
        scheme_tls = None
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint: {url!r} is not HOST:PORT (optionally prefixed grpc:// or grpcs://)")
    return text, scheme_tls


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0 = any free port) -> (host, port); bad input raises ValueError naming ``what``."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{what}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


# --- undecodable requests -> INVALID_ARGUMENT ------------------------------------------------------

class MalformedMessage:
    """Stands in for a request whose bytes are not a valid protobuf of the expected type."""

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error

    def describe(self) -> str:
        return f"request: bytes are not a valid {self.type_name} ({self.error})"


def _tolerant(deserializer: Any) -> Any:
    cls = getattr(deserializer, "__self__", None)
    type_name = cls.DESCRIPTOR.full_name if cls is not None else "message"

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return MalformedMessage(type_name, str(exc))

    return parse


def _guard_unary(behavior: Any) -> Any:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, MalformedMessage):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.describe())
        return await behavior(request, context)
    return handler


DRAIN_S = 1.0  # how long a stream that is being refused may go on sending before the refusal is sent
DRAIN_MESSAGES = 64


async def drain_requests(request_iterator: Any) -> None:
    """Read and drop what the client still sends (at most ``DRAIN_MESSAGES`` messages, ``DRAIN_S``
    seconds) before a stream is refused, so the status reaches a client that has finished writing:
    a status racing the client's writes reached it as INTERNAL (found by tests/test_grpc_fuzz.py)."""
    import asyncio
    import contextlib

    async def eat() -> None:
        count = 0
        async for _ in request_iterator:
            count += 1
            if count >= DRAIN_MESSAGES:
                return

    with contextlib.suppress(Exception):
        await asyncio.wait_for(eat(), DRAIN_S)


class StreamRefused(Exception):
    """Raised by a stream handler to end its stream with ``code``: the guard drains what the client
    still sends, then answers the status (see ``drain_requests``)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _guard_stream(behavior: Any) -> Any:
    async def handler(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        async def checked() -> Any:
            async for request in request_iterator:
                if isinstance(request, MalformedMessage):
                    raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, request.describe())
                yield request
        try:
            async for response in behavior(checked(), context):
                yield response
        except StreamRefused as exc:
            await drain_requests(request_iterator)
            await context.abort(exc.code, exc.message)
    return handler


class _Capture:
    def __init__(self) -> None:
        self.name = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        self.name, self.handlers = name, handlers


def add_service(add_generated: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like the generated ``add_*_to_server``, except that requests whose bytes do
    not parse are answered with INVALID_ARGUMENT (naming the expected message type) instead of UNKNOWN.
    Supports unary-unary and stream-stream methods (the only kinds in verisplit.proto)."""
    capture = _Capture()
    add_generated(servicer, capture)
    wrapped: dict[str, Any] = {}
    for method, h in capture.handlers.items():
        if h.unary_unary is not None:
            wrapped[method] = h._replace(request_deserializer=_tolerant(h.request_deserializer),
                                         unary_unary=_guard_unary(h.unary_unary))
        elif h.stream_stream is not None:
            wrapped[method] = h._replace(request_deserializer=_tolerant(h.request_deserializer),
                                         stream_stream=_guard_stream(h.stream_stream))
        else:  # pragma: no cover - no such methods in the proto
            wrapped[method] = h
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.name, wrapped),))
    server.add_registered_method_handlers(capture.name, wrapped)


def offer_fields_to_pb(o: SignedFields) -> pb.Offer:
    return pb.Offer(
        protocol_version=o.protocol_version, provider_id=o.provider_id, public_key=o.public_key,
        model_id=o.model_id, weights_digest=o.weights_digest, num_layers=o.num_layers,
        first_layer=o.first_layer, end_layer=o.end_layer, price_per_work_unit=o.price_per_work_unit,
        endpoint=o.endpoint, kv_capacity_tokens=o.kv_capacity_tokens, issued_at_ms=o.issued_at_ms, dtype=o.dtype,
        lead_public_key=o.lead_public_key, nonce=o.nonce, expires_at_ms=o.expires_at_ms,
        heartbeat_counter=o.heartbeat_counter)


def offer_fields_from_pb(m: pb.Offer) -> SignedFields:
    return SignedFields(
        protocol_version=m.protocol_version, provider_id=m.provider_id, public_key=bytes(m.public_key),
        model_id=m.model_id, weights_digest=bytes(m.weights_digest), num_layers=m.num_layers,
        first_layer=m.first_layer, end_layer=m.end_layer, price_per_work_unit=m.price_per_work_unit,
        endpoint=m.endpoint, kv_capacity_tokens=m.kv_capacity_tokens, issued_at_ms=m.issued_at_ms, dtype=m.dtype,
        lead_public_key=bytes(m.lead_public_key), nonce=bytes(m.nonce), expires_at_ms=m.expires_at_ms,
        heartbeat_counter=m.heartbeat_counter)


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])


def open_channel(endpoint: str, tls_ca: Path | None) -> grpc.aio.Channel:
    """Channel to ``endpoint`` (``host:port``, ``grpc://`` or ``grpcs://``); TLS when a CA is given or grpcs://."""
    target, scheme_tls = parse_endpoint(endpoint)
    use_tls = scheme_tls if scheme_tls is not None else tls_ca is not None
    if use_tls:
        roots = tls_ca.read_bytes() if tls_ca is not None else None
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), options=grpc_options())
    return grpc.aio.insecure_channel(target, options=grpc_options())


SESSION_OPENING_TTL_MS = 60_000  # a session opening is valid this long after the lead signed it


def open_session_request(lead_key: "SigningKey", *, session_id: str, request_id: str, model_id: str,
                         segment_index: int, first_layer: int, end_layer: int, max_length: int,
                         audit_seed_commitment: bytes, dtype: str, next_endpoint: str = "", next_public_key: bytes = b"",
                         previous_public_key: bytes = b"", recipient_public_key: bytes = b"",
                         expires_at_ms: int | None = None) -> pb.OpenSessionRequest:
    """A session opening signed by the lead (``session_signing_bytes``): it fixes, before the first step,
    the request's audit-seed commitment and dtype that every commitment of the session must repeat (and,
    on the direct path, the neighbours the provider forwards to and accepts input from). It is bound to
    ``recipient_public_key`` (the provider it is for; empty: unbound) and expires at ``expires_at_ms``
    (default: ``SESSION_OPENING_TTL_MS`` from now, wall clock)."""
    if expires_at_ms is None:
        expires_at_ms = int(time.time() * 1000) + SESSION_OPENING_TTL_MS
    fields = dict(session_id=session_id, request_id=request_id, model_id=model_id, segment_index=segment_index,
                  first_layer=first_layer, end_layer=end_layer, max_length=max_length,
                  audit_seed_commitment=audit_seed_commitment, dtype=dtype, next_endpoint=next_endpoint,
                  next_public_key=next_public_key, previous_public_key=previous_public_key,
                  recipient_public_key=recipient_public_key, expires_at_ms=expires_at_ms)
    return pb.OpenSessionRequest(**fields, lead_signature=sign_session(lead_key, **fields))
