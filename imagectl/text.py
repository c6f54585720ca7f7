"""Counted nouns for messages: ``1 image``, ``2 images``, ``0 problems``, never ``image(s)``."""

from __future__ import annotations

__all__ = ["agree", "count"]


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``plural`` for nouns that do not just add an s (``arch``)."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def agree(n: int, singular: str, plural: str) -> str:
    """The verb that agrees with ``n`` things: ``agree(1, "lacks", "lack")``."""
    return singular if n == 1 else plural
