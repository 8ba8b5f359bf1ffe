-- 0003: less work per stored event (issue 6). Every event write paid for checks and index
-- entries that nothing needs; each is dropped here with the reason it is safe.

-- Foreign keys of the event tables. Each cost a referential-integrity trigger per inserted
-- row (a query plus a FOR KEY SHARE row lock; on `rooms` that lock lands on the row the same
-- transaction then updates). The references hold by construction: worker.storage.events
-- UPSERT_EVENT writes an event, its JSON and its prev references in one statement, from the
-- event row's own RETURNING, inside the room whose row UPSERT_ROOM made first; and no
-- statement deletes events or rooms.
ALTER TABLE events DROP CONSTRAINT events_room_nid_fkey;
ALTER TABLE event_json DROP CONSTRAINT event_json_event_nid_fkey;
ALTER TABLE event_prevs DROP CONSTRAINT event_prevs_event_nid_fkey;

-- The write log is now written by UPSERT_EVENT itself (a data-modifying CTE, for events the
-- statement inserted, in the same statement and so exactly as durable as the event), not by
-- a PL/pgSQL trigger fired per row. Same columns, same values.
DROP TRIGGER events_write_log ON events;
DROP FUNCTION write_log_event();

-- Reading the write log by room is an operator's or a test's occasional query: a sort of
-- the log is fine there, an index entry per event written is not. Pruning uses the primary
-- key (seq), which stays.
DROP INDEX write_log_room;

-- The outbox is keyed by output_id (its dedup key, and what the relay marks rows by); seq
-- only orders rows, and only unsent rows are read in seq order (outbox_unsent_idx). Making
-- output_id the primary key drops one index entry per inserted row and one more per row
-- marked sent (marking rewrites the row: sent_at is in outbox_unsent_idx's predicate).
ALTER TABLE outbox
    DROP CONSTRAINT outbox_pkey,
    DROP CONSTRAINT outbox_output_id_key,
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (output_id);
