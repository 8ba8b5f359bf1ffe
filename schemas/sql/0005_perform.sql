-- 0005: what the Perform API keeps beside the rooms: aliases, the room directory, the
-- transaction IDs of sent events, and the rooms a user forgot.

-- A room alias (`#name:server`) of this server and the room it names. `creator` may remove
-- it (as may anyone with power to change the room's canonical alias).
CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- The rooms published in this server's room directory. `seq` orders the pages of
-- `published_rooms`: a page continues after the last seq it returned.
CREATE TABLE room_directory (
    room_id TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- send_event's idempotency: the event a (sender, txn_id) built, written before the event is
-- submitted. `pdu` is the signed event, so that a retry after a crash between the two can
-- submit the very same event again (same ID: the input stream and the pipeline drop repeats)
-- instead of building a second one.
CREATE TABLE perform_txns (
    sender TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    room_version TEXT NOT NULL,
    event_id TEXT NOT NULL,
    pdu BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sender, txn_id)
);

-- Rooms a user left and then forgot: `rooms_for_user` no longer lists them.
CREATE TABLE forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    forgotten_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, room_id)
);
