"""Input validation shared by the spec modules: each helper raises the caller's documented error
(a ``ValueError`` subclass) with a message that starts with the field name, never a bare
``TypeError``, ``IndexError`` or ``struct.error``.

``bool`` is never accepted where an integer is expected (``True`` is not the layer count 1), and a
float is never accepted where an exact integer is expected (``1.5`` is not a price).
Functions that also run on Z3 terms (``tiles_exactly``, ``first_failing_link``, ...) skip the type
checks for symbolic values (``verisplit.spec.arith.is_symbolic``) and check only what is concrete.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from verisplit.spec.arith import is_symbolic


def is_int(value: Any) -> bool:
    """True for a Python ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(value: Any, field: str, error: type[ValueError], minimum: int | None = None,
                maximum: int | None = None) -> int:
    """``value`` if it is an int (not bool) in [minimum, maximum], else ``error`` naming ``field``."""
    if not is_int(value):
        raise error(f"{field}: must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{field}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise error(f"{field}: must be <= {maximum}, got {value}")
    return value


def require_str(value: Any, field: str, error: type[ValueError], non_empty: bool = False,
                max_utf8: int | None = None) -> str:
    """``value`` if it is a str (optionally non-empty, UTF-8 encodable within ``max_utf8`` bytes)."""
    if not isinstance(value, str):
        raise error(f"{field}: must be a string, got {value!r}")
    if non_empty and not value:
        raise error(f"{field}: must be non-empty")
    if max_utf8 is not None:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise error(f"{field}: is not encodable as UTF-8") from None
        if size > max_utf8:
            raise error(f"{field}: {size} UTF-8 bytes exceed the maximum {max_utf8}")
    return value


def require_bytes(value: Any, field: str, error: type[ValueError], length: int | None = None,
                  max_length: int | None = None) -> bytes:
    """``value`` as ``bytes`` if it is bytes/bytearray (of exactly ``length`` / at most ``max_length``)."""
    if not isinstance(value, (bytes, bytearray)):
        raise error(f"{field}: must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise error(f"{field}: must be {length} bytes, got {len(value)}")
    if max_length is not None and len(value) > max_length:
        raise error(f"{field}: {len(value)} bytes exceed the maximum {max_length}")
    return bytes(value)


def require_instance(value: Any, cls: type, field: str, error: type[ValueError]) -> Any:
    """``value`` if it is an instance of ``cls``, else ``error`` naming ``field``."""
    if not isinstance(value, cls):
        raise error(f"{field}: must be a {cls.__name__}, got {type(value).__name__}")
    return value


def require_sequence(value: Any, field: str, error: type[ValueError]) -> list[Any]:
    """``value`` as a list if it is a list or tuple (not a str, bytes, set, dict or iterator)."""
    if not isinstance(value, (list, tuple)):
        raise error(f"{field}: must be a list or tuple, got {type(value).__name__}")
    return list(value)


def require_same_length(first: Any, second: Any, fields: str, error: type[ValueError]) -> None:
    """Both sequences have the same length (no silent ``zip`` truncation)."""
    if len(first) != len(second):
        raise error(f"{fields}: lengths differ ({len(first)} != {len(second)})")


def is_exact_number(value: Any) -> bool:
    """An int (not bool) or a ``Fraction``: the exact numbers the spec computes with."""
    return is_int(value) or isinstance(value, Fraction)


def require_number(value: Any, field: str, error: type[ValueError], allow_symbolic: bool = True) -> Any:
    """``value`` if it is an exact number (int, Fraction) or, when allowed, a Z3 term."""
    if allow_symbolic and is_symbolic(value):
        return value
    if not is_exact_number(value):
        raise error(f"{field}: must be an int or Fraction, got {value!r}")
    return value


def require_probability(value: Any, field: str, error: type[ValueError]) -> Fraction:
    """``value`` as a ``Fraction`` if it is an int or Fraction in [0, 1] (floats are not exact)."""
    if not is_exact_number(value):
        raise error(f"{field}: must be a Fraction (or int) in [0, 1], got {value!r}")
    if not 0 <= value <= 1:
        raise error(f"{field}: audit probability must be in [0, 1], got {value}")
    return Fraction(value)
