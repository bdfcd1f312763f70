"""The networked roles: providers, the lead, its HTTP API, the gRPC wire format.

``provider`` serves one layer range and signs commitments (``behaviour`` is its honest hook
interface); ``registry`` holds signed offers and bans, ``admission`` its admission policy,
possession probes and the Admission service; ``hops`` is one provider's stream inside a
request; ``lead`` routes and relays (``reroute``: around capacity refusals at OpenSession), ``views`` renders what the lead publishes, ``api`` is the
OpenAI-compatible HTTP face; ``framing`` chunks tensors onto the wire (``verisplit.proto``);
``procs`` starts local cohorts. May import ``runtime``, ``records`` and ``verisplit.spec``; never
``audit`` (the lead takes its audit service as a hook object) or ``cli``.
"""
