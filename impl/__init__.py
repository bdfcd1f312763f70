"""The reference implementation of the verisplit protocol (``verisplit.spec`` is the rulebook).

Subpackages, by role, and which way they may import (a test checks the graph has no cycles and
follows this order; each may always import ``verisplit.spec``):

- ``runtime``: the compute core: HF checkpoints, layer-range segments with KV caches, tokenizer,
  reference generation, canonical tensor bytes. Imports nothing else from ``impl``.
- ``records``: what is kept: Ed25519 key files and signed statements, per-request retention of
  boundary tensors, the signed SQLite settlement ledger. Imports nothing else from ``impl``.
- ``audit``: the verifier (re-execution and judgement), calibration of tolerances, and the lead's
  post-request audit/settlement service. Imports ``runtime`` and ``records``.
- ``node``: the networked roles: provider and lead (registry, relay, views), the OpenAI HTTP API,
  the gRPC wire format and local process management. Imports ``runtime`` and ``records``.
- ``cli``: the ``verisplit`` subcommands and the demo. Imports any of the above.

Data flows client -> ``node.api`` -> ``node.lead`` (routes with ``spec.cohort.form_cohort``, relays
each step through the providers' ``node.provider``, checking ``spec.commitment`` rules on receipt)
-> ``records.requests`` -> ``audit.service`` (``audit.verifier``, ``spec.settlement``) ->
``records.ledger``.
"""
