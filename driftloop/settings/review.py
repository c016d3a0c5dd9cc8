"""Settings of the human review queue (issue 15): which interactions are put in front of reviewers."""

from __future__ import annotations

from driftloop.settings.base import Section


class ReviewSettings(Section):
    """Sampling policy of the review queue (filled in by the review-queue work)."""

    enabled: bool = False
