"""What the implementation keeps: identities, request evidence and the settlement ledger.

``keys`` (Ed25519 key files, signed offers and heartbeats), ``requests`` (on-disk retention of each
request's boundary tensors and commitments), ``ledger`` (the signed, hash-chained SQLite ledger).
May import ``verisplit.spec`` only, never another ``impl`` subpackage.
"""
