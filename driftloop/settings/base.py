"""What every settings section shares: unknown keys are errors, defaults are validated too."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every settings section: ``extra="forbid"`` turns a typo into an error, not an ignored key."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def duplicated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted (empty when all are unique)."""
    return sorted(n for n, k in Counter(names).items() if k > 1)
