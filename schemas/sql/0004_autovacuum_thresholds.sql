-- 0004: no statistics from tables too small to describe what they become.
--
-- The worker's statements are prepared once per connection and PostgreSQL keeps their
-- generic plans until a table's statistics change. Statistics gathered while a table holds a
-- few hundred rows say that scanning it whole is cheaper than an index probe, and a plan
-- built on them is kept while the table grows (for up to a minute, autovacuum's naptime, at
-- a thousand events a second). With the default thresholds (50 changed rows, plus 10% or
-- 20%) autovacuum analyzes and vacuums these tables exactly then, early in a deployment's life.
--
-- Below these thresholds a table stays never-analyzed, and for such a table PostgreSQL
-- assumes at least ten pages: every lookup by key is then an index probe (checked at several
-- sizes by tests/storage/test_plans.py). The first statistics come after 10,000 inserts or
-- updates, so from thousands of rows (these tables change a row seldom after inserting it),
-- where probes win whatever the statistics say (checked there too). Later passes follow the
-- usual scale factors, so big tables are analyzed and vacuumed as often as before.
--
-- `rooms` is the exception that needs none: its row is updated by every event, so it reaches
-- the threshold while small, and is re-analyzed as often as it changes.

ALTER TABLE events SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE event_json SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE event_prevs SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE state_snapshots SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE state_blocks SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE state_keys SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE memberships SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE invites SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE redactions SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE outbox SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE write_log SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);
