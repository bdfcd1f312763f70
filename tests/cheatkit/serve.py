"""``python -m cheatkit.serve MODE [provider serve options]``: a provider process that cheats.

MODE is a catalogue name (``cheatkit.cheats.BEHAVIOURS``) or ``module:Class`` naming a ``Behaviour``
subclass importable from ``sys.path`` (test helpers). The remaining arguments are exactly those of
``verisplit provider serve``; the behaviour reaches that command in-process as its click context
object, the only way a provider can run anything but the honest behaviour.
"""

from __future__ import annotations

import importlib
import sys

from verisplit.impl.node.behaviour import Behaviour


def load_behaviour(mode: str) -> Behaviour:
    """The behaviour for ``mode``; SystemExit with a one-line message when it cannot be loaded."""
    if ":" in mode:
        module_name, _, attr = mode.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise SystemExit(f"cheatkit.serve: cannot load {mode!r} ({exc})") from None
        if not (isinstance(cls, type) and issubclass(cls, Behaviour)):
            raise SystemExit(f"cheatkit.serve: {mode!r} is not a Behaviour subclass")
        return cls()
    from cheatkit.cheats import make_behaviour

    try:
        return make_behaviour(mode)
    except ValueError as exc:
        raise SystemExit(f"cheatkit.serve: {exc}") from None


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m cheatkit.serve MODE [verisplit provider serve options]")
    behaviour = load_behaviour(argv[0])
    from verisplit.impl.cli.net import provider_serve

    provider_serve.main(args=argv[1:], prog_name="cheatkit.serve", obj=behaviour)


if __name__ == "__main__":
    main(sys.argv[1:])
