-- 0002: the write log, one row per event first written, naming the worker that wrote it.
--
-- Lets an operator (and the cluster tests) see which worker wrote each room when, and check
-- that two workers never worked on one room at the same time (DESIGN §5). Written by a
-- trigger inside the event's own transaction, so it is exactly as durable as the event; the
-- worker names itself through its connections' application_name (worker.app).

CREATE TABLE write_log (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_nid BIGINT NOT NULL,
    event_nid BIGINT NOT NULL,
    worker TEXT NOT NULL,
    txn_started TIMESTAMPTZ NOT NULL,
    written TIMESTAMPTZ NOT NULL
);
COMMENT ON TABLE write_log IS 'Which worker first wrote each event, and when (append-only; prune by seq or written).';
COMMENT ON COLUMN write_log.seq IS 'Order of the writes (commit order within a room, which the room lock serialises).';
COMMENT ON COLUMN write_log.room_nid IS 'Room of the event.';
COMMENT ON COLUMN write_log.event_nid IS 'The event written.';
COMMENT ON COLUMN write_log.worker IS 'application_name of the writing session: the worker id.';
COMMENT ON COLUMN write_log.txn_started IS 'Start of the writing transaction (before it took the room lock).';
COMMENT ON COLUMN write_log.written IS 'When the event row was inserted (under the room lock).';
CREATE INDEX write_log_room ON write_log (room_nid, seq);

CREATE FUNCTION write_log_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO write_log (room_nid, event_nid, worker, txn_started, written)
    VALUES (NEW.room_nid, NEW.event_nid, current_setting('application_name'), now(),
            clock_timestamp());
    RETURN NULL;
END
$$;

CREATE TRIGGER events_write_log AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION write_log_event();
