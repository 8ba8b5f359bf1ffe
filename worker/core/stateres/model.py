"""The port and the result type of state resolution.

`Authorizer` is the one thing resolution asks of the auth rules (the production
implementation is `worker.core.auth`, see `SpecAuthorizer`); `ResolutionStats` is what one
resolution reports about its cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from worker.core.events import Event, StateKey
from worker.core.outcomes import Rejection


class Authorizer(Protocol):
    """The two auth-rule questions state resolution asks (a narrow port, STYLE R4).

    The production implementation is `worker.core.auth`; tests may plug in another
    implementation to isolate the resolution algorithm from the auth rules.
    """

    def auth_types(self, event: Event) -> Iterable[StateKey]:
        """The state keys the auth rules read for `event` (spec "auth events selection")."""
        ...

    def check(self, event: Event, auth_events: Mapping[StateKey, Event]) -> Rejection | None:
        """None when `event` is allowed given `auth_events`, else why not."""
        ...


@dataclass(frozen=True, slots=True)
class ResolutionStats:
    """What one resolution cost, for the shell to log and measure (the core does not log).

    `conflicted` counts distinct event IDs in the conflicted state set; `auth_difference`
    the events the auth difference (and, in v2.1, the conflicted subgraph) added on top of
    them; `auth_checked` the auth-rule evaluations performed.
    """

    conflicted: int = 0
    auth_difference: int = 0
    auth_checked: int = 0
