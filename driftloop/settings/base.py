"""What every settings section shares: unknown keys are errors, defaults are validated too."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Annotated, Protocol, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from driftloop.settings.conditions import ConditionError, parse_condition


class Section(BaseModel):
    """Base of every settings section: ``extra="forbid"`` turns a typo into an error, not an ignored key."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def duplicated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted (empty when all are unique)."""
    return sorted(n for n, k in Counter(names).items() if k > 1)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def unique_names(what: str) -> AfterValidator:
    """A validator for a list of named items (``Annotated[list[X], unique_names("channel")]``): the names are
    what other settings refer to them by, so two with one name are an error that lists the duplicates."""

    def check(items: list[N]) -> list[N]:
        dup = duplicated(i.name for i in items)
        if dup:
            raise ValueError(f"duplicate {what} name(s): {dup}")
        return items

    validate: Callable[[list[N]], list[N]] = check
    return AfterValidator(validate)


def _valid_condition(text: str) -> str:
    try:
        parse_condition(text)
    except ConditionError as e:
        raise ValueError(str(e)) from None
    return text


# A settings field holding a condition: checked when the configuration loads, the error saying what and where.
ConditionText = Annotated[str, AfterValidator(_valid_condition)]
