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

COMMENT ON TABLE room_aliases IS 'Room aliases of this server and the rooms they name.';
COMMENT ON COLUMN room_aliases.alias IS 'The alias, #localpart:server_name.';
COMMENT ON COLUMN room_aliases.room_id IS 'The room the alias names.';
COMMENT ON COLUMN room_aliases.creator IS 'The user who set the alias; may remove it.';
COMMENT ON COLUMN room_aliases.created_at IS 'When the alias was set.';
COMMENT ON TABLE room_directory IS 'Rooms published in this server''s room directory.';
COMMENT ON COLUMN room_directory.room_id IS 'The published room.';
COMMENT ON COLUMN room_directory.seq IS 'Publication order: pages of published_rooms follow it.';
COMMENT ON COLUMN room_directory.published_at IS 'When the room was published.';
COMMENT ON TABLE perform_txns IS 'send_event transaction IDs and the event each built.';
COMMENT ON COLUMN perform_txns.sender IS 'The local user who sent the event.';
COMMENT ON COLUMN perform_txns.txn_id IS 'The client''s transaction ID.';
COMMENT ON COLUMN perform_txns.room_id IS 'The room of the event.';
COMMENT ON COLUMN perform_txns.room_version IS 'The room''s version, to submit the event again.';
COMMENT ON COLUMN perform_txns.event_id IS 'The event the transaction built.';
COMMENT ON COLUMN perform_txns.pdu IS 'The signed event (JSON), to submit it again after a crash.';
COMMENT ON COLUMN perform_txns.created_at IS 'When the event was built.';
COMMENT ON TABLE forgotten_rooms IS 'Rooms a user left and forgot.';
COMMENT ON COLUMN forgotten_rooms.user_id IS 'The local user.';
COMMENT ON COLUMN forgotten_rooms.room_id IS 'The forgotten room.';
COMMENT ON COLUMN forgotten_rooms.forgotten_at IS 'When the user forgot it.';
