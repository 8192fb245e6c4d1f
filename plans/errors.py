"""Errors about plans. Every one is a :class:`sp.ledger.errors.SpError` shown as one line."""

from __future__ import annotations

from sp.ledger.errors import SpError, UsageError
from sp.machines.plan import PlanTransitionError
from sp.plans.decode import Problem

__all__ = ["AmbiguousPlanError", "PlanInvalidError", "PlanNotFoundError", "PlanTransitionError"]


class PlanInvalidError(UsageError):
    """A plan file has problems; ``problems`` holds every one of them, each with its path."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        n = len(problems)
        first = str(problems[0]) if problems else source
        more = f" (and {n - 1} more problem{'s' if n > 2 else ''})" if n > 1 else ""
        super().__init__(f"{first}{more}")
        self.source = source
        self.problems = problems


class PlanNotFoundError(SpError):
    exit_code = 3

    def __init__(self, plan_id: str) -> None:
        super().__init__(f"no plan {plan_id!r}")
        self.plan_id = plan_id


class AmbiguousPlanError(UsageError):
    def __init__(self, prefix: str, matches: list[str]) -> None:
        super().__init__(f"plan id prefix {prefix!r} matches several plans: "
                         f"{', '.join(matches[:5])}")
