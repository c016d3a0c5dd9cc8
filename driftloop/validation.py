"""Small validation helpers shared by the settings sections."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def duplicated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted (empty when all are unique)."""
    return sorted(n for n, k in Counter(names).items() if k > 1)
