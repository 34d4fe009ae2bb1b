"""Type narrowing at the Family protocol's boundary, where configs and models arrive as base types."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def narrow(value: object, expected: type[T], family: str) -> T:
    """`value` as an `expected`; anything else is a programming error naming the family and both types."""
    if not isinstance(value, expected):
        raise TypeError(f"{family} needs a {expected.__name__}, got {type(value).__name__}")
    return value
