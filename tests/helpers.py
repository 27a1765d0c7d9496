"""Test-only reward functions, importable by path (`helpers.digit_share`) in configs the tests write.

The tiny random policy never earns the real rewards; these give varied scores so that GRPO
advantages, and therefore weight updates, are non-zero.
"""

from __future__ import annotations


def digit_share(completions: list[str], records: list[dict]) -> list[float]:
    """Share of characters that are digits (varies across random samples)."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


def letter_a_share(completions: list[str], records: list[dict]) -> list[float]:
    return [text.lower().count("a") / max(len(text), 1) for text in completions]
