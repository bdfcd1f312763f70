"""Verification: re-execute audited segments, judge them, calibrate tolerances, settle and eject.

``verifier`` (evidence checks and re-execution), ``calibrate`` (honest drift -> tolerance),
``service`` (the lead's post-request hook: chain analysis, sampled audits, settlement, ledger).
May import ``runtime``, ``records`` and ``verisplit.spec``; never ``node`` or ``cli``.
"""
