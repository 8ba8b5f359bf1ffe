"""Self-joins and self-leaves decided by table: rule 5 of `member.py`, tabulated.

State resolution in a big room checks thousands of membership events, and nearly all of
them are someone joining (or re-joining to change a display name) or leaving. For those the
whole of `check_auth` comes down to two facts: the sender's current membership and the
room's join rule. `SelfMembershipTable` works out, once per create event, everything that
does not depend on the event, and turns each join rules event into a table "current
membership -> verdict" by asking `member.self_join_step` for every membership; leaving is
`member.self_leave_from`. The rule itself lives only in `member.py`.

The table answers only when it is sure to agree with `check_auth` (rules 1-4 cannot refuse
the event, and 5.3.1 and 5.3.5.2 are not involved); otherwise it answers None and the caller
runs the full rules. Agreement is a tested property (`tests/core/test_auth_self_membership.py`
compares both on random events and auth states).

Spec: https://spec.matrix.org/latest/rooms/v12/#authorisation-rules (rules 2-5; 5.3 joins,
5.5.1 leaving), with the same version scopes as `check_auth` (see `member.py`).
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.core.auth.member import join_rule_of, self_join_step, self_leave_from
from worker.core.events import MEMBER, VIA, Event
from worker.core.versions import RoomRules

# A verdict table: current membership of the sender (None: no membership event) -> allowed
# (True), refused (False), or "ask the full rules" (None), with a default for the rest.
Table = tuple[Mapping[str | None, bool | None], bool | None]

# Join rules tables kept per table object: a room has a handful of join rules events.
_MAX_JOIN_TABLES = 16
# Every membership a rule step names; any other string behaves like `_OTHER` (the default).
_MEMBERSHIPS: tuple[str | None, ...] = (None, "invite", "join", "leave", "ban", "knock")
_OTHER = "\x00another membership"


def _join_table(rules: RoomRules, join_rules: Event | None) -> Table:
    """`self_join_step` for every current membership under one join rules event."""
    rule = join_rule_of(join_rules)

    def verdict(current: str | None) -> bool | None:
        step = self_join_step(rules, rule, current)
        # 5.3.5.2 reads the event and the authoriser: the full rules decide.
        return None if step == "join/5.2" else step is None

    default = verdict(_OTHER)
    return {m: v for m in _MEMBERSHIPS if (v := verdict(m)) != default}, default


class SelfMembershipTable:
    """Rule 2-5 verdicts for self-joins and self-leaves, given one create event.

    Built once per resolution (per create event in force). `allows` is the table as a
    function of what `auth_events` would hold under (m.room.member, sender) and
    (m.room.join_rules, ""). State resolution's hot loop reads the same fields inline
    (`stateres.iterative`); both are tested against `check_auth`.
    """

    __slots__ = (
        "_join_tables",
        "create_prev",
        "first_joiner",
        "leave_allowed",
        "restricted",
        "room_id",
        "rules",
        "usable",
    )

    def __init__(self, rules: RoomRules, create: Event) -> None:
        self.rules = rules
        # 5.3.1 (all versions): the creator's first join, right after the create event, is
        # judged differently; such joins (prev_events = [create]) go to the full rules.
        # The creator is content.creator in v1-v10 (any JSON value), the sender from v11.
        self.create_prev = (create.event_id,)
        self.first_joiner: object = (
            create.sender if rules.implicit_room_creator else create.content.get("creator")
        )
        # 2 (v12+): the room ID is the create event's ID with `!` for `$`. Events of another
        # room go to the full rules. None: the version has no such rule.
        self.room_id: str | None = None
        if rules.room_id_from_create_event:
            self.room_id = "!" + create.event_id[1:]
        # 3 (v1-v11) / 4 (v12): only a create event that sets `m.federate` can refuse
        # anyone, on the sender's server; then the table is not used at all. Nor is it
        # for a v12 create event whose ID does not start with `$` (rule 2 refuses all).
        self.usable = "m.federate" not in create.content and (
            self.room_id is None or create.event_id.startswith("$")
        )
        # 5.2 (v8+): a membership event naming `join_authorised_via_users_server` also needs
        # that server's signature, whatever the membership; such events go to the full
        # rules. Earlier versions ignore the key.
        self.restricted = rules.restricted_join_rule
        # 5.5.1 (all versions; withdrawing a knock v7+).
        self.leave_allowed = self_leave_from(rules)
        # join rules event ID -> (that event, its table); None: no join rules event. The
        # event is kept to check identity: a table outlives one resolution (see
        # `table_for`), and v1-v2 event IDs are only what the sender claims.
        self._join_tables: dict[str | None, tuple[Event | None, Table]] = {}

    def join_table(self, join_rules: Event | None) -> Table:
        """The self-join verdicts under `join_rules` (None: the room has none), memoised."""
        key = join_rules.event_id if join_rules is not None else None
        got = self._join_tables.get(key)
        if got is not None and got[0] is join_rules:
            return got[1]
        table = _join_table(self.rules, join_rules)
        if len(self._join_tables) >= _MAX_JOIN_TABLES:
            self._join_tables.clear()
        self._join_tables[key] = (join_rules, table)
        return table

    def allows(
        self, event: Event, sender_member: Event | None, join_rules: Event | None
    ) -> bool | None:
        """Whether `check_auth` allows `event`; None when the table does not apply."""
        # Only self-joins and self-leaves of this room version, without the fields that
        # bring in other rules: 4 (v1-v5 aliases) and 6-10 concern other event types.
        sender = event.sender
        if (
            not self.usable
            or event.type != MEMBER
            or event.state_key != sender
            or event.rules is not self.rules
        ):
            return None
        content = event.content
        membership = content.get("membership")
        # 5.2 (v8+): see __init__.
        if self.restricted and VIA in content:
            return None
        # 2 (v12+): the room ID.
        if self.room_id is not None and event.room_id != self.room_id:
            return None
        # The sender's current membership, read as `membership_of` reads it.
        current = sender_member.content.get("membership") if sender_member is not None else None
        if not isinstance(current, str):
            current = None
        if membership == "leave":
            return current in self.leave_allowed
        if membership != "join":
            return None
        # 5.3.1: see __init__ (nobody but the first joiner is let in by it).
        if sender == self.first_joiner and event.prev_event_ids == self.create_prev:
            return None
        verdicts, default = self.join_table(join_rules)
        return verdicts.get(current, default)


def table_for(rules: RoomRules, create: Event) -> SelfMembershipTable:
    """The table for one create event, shared by the resolutions of its room.

    Building one costs more than a small resolution's checks. Events hash by identity, so
    a create event read again from storage simply gets a new table.
    """
    got = _SHORTCUTS.get(create)
    if got is None or got.rules is not rules:
        if len(_SHORTCUTS) >= _MAX_SHORTCUTS:
            _SHORTCUTS.clear()
        got = _SHORTCUTS[create] = SelfMembershipTable(rules, create)
    return got


# A memo, not state: a table is a function of (rules, create event).
_SHORTCUTS: dict[Event, SelfMembershipTable] = {}
_MAX_SHORTCUTS = 64
