"""verisplit: verified split inference.

The distribution maps the repository's design folders onto one namespace:
``spec/`` -> ``verisplit.spec``, ``impl/`` -> ``verisplit.impl``,
``conformance/`` -> ``verisplit.conformance``, ``proofs/z3/`` -> ``verisplit.proofs_z3``.
"""

__version__ = "0.1.0"
