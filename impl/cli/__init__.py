"""The ``verisplit`` subcommands (wired lazily by ``verisplit.cli``) and the demo.

May import any ``impl`` subpackage; nothing imports ``cli`` except the console entry point.
"""
