"""What the implementation keeps: identities, request evidence and the settlement ledger.

``keys`` (Ed25519 key files, signed offers and heartbeats), ``requests`` (on-disk retention of each
request's boundary tensors and commitments), ``ledger`` (the signed, hash-chained SQLite ledger) and
``ledger_escrow`` (the escrow sections of its records).
May import ``verisplit.spec`` only, never another ``impl`` subpackage.
"""
