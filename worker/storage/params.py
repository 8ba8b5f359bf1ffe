"""How the store's statements take their parameters, so that their plans stay index probes."""

from __future__ import annotations

from collections.abc import Sequence

# Plan robustness. asyncpg prepares each statement once per connection, and after five
# executions PostgreSQL may switch to a generic plan costed while the tables were tiny (or
# never analyzed) and keep it for the life of the connection. A join may then be frozen as a
# hash join over a sequential scan of a table that later holds millions of rows. So every
# lookup by key below is written so that the only plan is an index probe per key: scalar
# subqueries and `LATERAL (... LIMIT 1)` lookups on primary and unique keys, which the planner
# cannot turn into hash joins, driven by the keys themselves (`unnest(keys) CROSS JOIN
# LATERAL`). Not `WHERE key = ANY($1)`: costed as ten probes against one scan of a table of
# ten to twelve pages, the scan wins, and is kept while the table grows. Each probe is costed
# on its own against a whole scan, which never wins on a never-analyzed table (PostgreSQL
# assumes ten pages or more) nor on one of the size autovacuum first analyzes it at
# (schemas/sql/0004). tests/storage/test_plans.py checks the generic plans at many sizes.
#
# Generic plans, kept. A generic plan costs a key array as a hundred keys (`unnest($1)`) or
# ten (`ANY($1)`); a custom plan sees the real, usually smaller, array and so always looks
# cheaper, and PostgreSQL then plans the statement afresh on every call, which for the hot
# reads costs more than executing them. So the arrays are read through an InitPlan,
# `(SELECT $1::text[])::text[]`, which no plan can see into: custom and generic plans cost
# alike, and after five calls the generic one is kept.


def array_param(n: int, sql_type: str) -> str:
    """Parameter `n` (an array of `sql_type`), hidden from the planner (see above)."""
    return f"(SELECT ${n}::{sql_type}[])::{sql_type}[]"


def keys_param(n: int, sql_type: str) -> str:
    """One row per element of array parameter `n`: `FROM {keys_param(..)} AS k(key)`."""
    return f"unnest({array_param(n, sql_type)})"


def nid_array(nids: Sequence[int]) -> str:
    """A bigint[] literal."""
    return "{" + ",".join(str(n) for n in nids) + "}"


__all__ = ["array_param", "keys_param", "nid_array"]
