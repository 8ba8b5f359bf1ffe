-- 0001: the roomserver's tables (DESIGN §3). Applied by worker.storage.migrations in one
-- transaction; never edit this file once shipped: add 0002_*.sql instead.
--
-- NIDs (numeric IDs) are internal: no NID ever leaves the roomserver. 0 means "none".
-- Type and state-key NIDs below 65536 are reserved for the preassigned well-known strings.

-- Rooms -------------------------------------------------------------------------------------

CREATE TABLE rooms (
    room_nid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id TEXT NOT NULL UNIQUE,
    room_version TEXT NOT NULL,
    current_snapshot_nid BIGINT,
    extremities TEXT[] NOT NULL DEFAULT '{}',
    notes JSONB NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE rooms IS 'One row per room the roomserver knows, stub rooms included.';
COMMENT ON COLUMN rooms.room_nid IS 'Numeric room ID, used by every other table.';
COMMENT ON COLUMN rooms.room_id IS 'The Matrix room ID.';
COMMENT ON COLUMN rooms.room_version IS 'Room version string from the create event (or the input that introduced the room).';
COMMENT ON COLUMN rooms.current_snapshot_nid IS 'Snapshot of the current state (state after the forward extremities); 0 = empty state, NULL = no current state yet.';
COMMENT ON COLUMN rooms.extremities IS 'Forward extremities (event IDs), as set by the last new event; few, so kept inline.';
COMMENT ON COLUMN rooms.notes IS 'Room-level facts written by the pipeline for the inspector and the state-reset detector.';

-- String dictionaries -----------------------------------------------------------------------

CREATE SEQUENCE event_type_nid_seq START WITH 65536 MINVALUE 65536;
CREATE TABLE event_types (
    type_nid BIGINT PRIMARY KEY DEFAULT nextval('event_type_nid_seq'),
    event_type TEXT NOT NULL UNIQUE
);
ALTER SEQUENCE event_type_nid_seq OWNED BY event_types.type_nid;
COMMENT ON TABLE event_types IS 'Event type strings and their NIDs (global, never deleted).';
COMMENT ON COLUMN event_types.type_nid IS 'NID of the type: 1..65535 preassigned, dynamic ones from 65536.';
COMMENT ON COLUMN event_types.event_type IS 'The event type string.';

INSERT INTO event_types (type_nid, event_type) VALUES
    (1, 'm.room.create'),
    (2, 'm.room.power_levels'),
    (3, 'm.room.join_rules'),
    (4, 'm.room.third_party_invite'),
    (5, 'm.room.member'),
    (6, 'm.room.redaction'),
    (7, 'm.room.history_visibility'),
    (8, 'm.room.name'),
    (9, 'm.room.topic'),
    (10, 'm.room.avatar'),
    (11, 'm.room.canonical_alias'),
    (12, 'm.room.guest_access'),
    (13, 'm.room.server_acl'),
    (14, 'm.room.encryption'),
    (15, 'm.room.tombstone'),
    (16, 'm.room.pinned_events'),
    (17, 'm.room.message'),
    (18, 'm.room.encrypted'),
    (19, 'm.reaction'),
    (20, 'm.space.child'),
    (21, 'm.space.parent');

CREATE SEQUENCE state_key_nid_seq START WITH 65536 MINVALUE 65536;
CREATE TABLE state_keys (
    state_key_nid BIGINT PRIMARY KEY DEFAULT nextval('state_key_nid_seq'),
    state_key TEXT NOT NULL UNIQUE
);
ALTER SEQUENCE state_key_nid_seq OWNED BY state_keys.state_key_nid;
COMMENT ON TABLE state_keys IS 'State key strings and their NIDs (global; for members this is the user ID dictionary).';
COMMENT ON COLUMN state_keys.state_key_nid IS 'NID of the state key: 1 is the empty string, dynamic ones from 65536.';
COMMENT ON COLUMN state_keys.state_key IS 'The state key string.';

INSERT INTO state_keys (state_key_nid, state_key) VALUES (1, '');

-- Events ------------------------------------------------------------------------------------

CREATE TABLE events (
    event_nid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_nid BIGINT NOT NULL REFERENCES rooms (room_nid),
    type_nid BIGINT NOT NULL,
    state_key_nid BIGINT NOT NULL,
    depth BIGINT NOT NULL,
    kind SMALLINT NOT NULL,
    outcome SMALLINT NOT NULL,
    reason_code TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    membership SMALLINT,
    auth_event_nids BIGINT[] NOT NULL DEFAULT '{}',
    before_snapshot_nid BIGINT,
    redacted_by TEXT
);
COMMENT ON TABLE events IS 'Every stored event: accepted, soft-failed, rejected and outliers.';
COMMENT ON COLUMN events.event_nid IS 'Numeric event ID; what state blocks hold.';
COMMENT ON COLUMN events.event_id IS 'The Matrix event ID.';
COMMENT ON COLUMN events.room_nid IS 'Room of the event.';
COMMENT ON COLUMN events.type_nid IS 'NID of the event type.';
COMMENT ON COLUMN events.state_key_nid IS 'NID of the state key; 0 = not a state event.';
COMMENT ON COLUMN events.depth IS 'The PDU''s depth field.';
COMMENT ON COLUMN events.kind IS 'How it was input: 1 new, 2 outlier, 3 old (worker.storage.events.KIND_CODES).';
COMMENT ON COLUMN events.outcome IS 'What was decided: 1 accepted, 2 soft_failed, 3 rejected, 4 outlier, 5 invalid (worker.storage.events.OUTCOME_CODES).';
COMMENT ON COLUMN events.reason_code IS 'Stable machine-readable reason for a refusal; empty when accepted.';
COMMENT ON COLUMN events.reason IS 'Human-readable reason for a refusal; empty when accepted.';
COMMENT ON COLUMN events.membership IS 'For m.room.member events: 1 leave, 2 invite, 3 join, 4 knock, 5 ban, 0 other; NULL for other types.';
COMMENT ON COLUMN events.auth_event_nids IS 'NIDs of the auth events that were stored when this event was (for auth chains).';
COMMENT ON COLUMN events.before_snapshot_nid IS 'Snapshot of the state before the event; 0 = empty state, NULL = no state known (outliers).';
COMMENT ON COLUMN events.redacted_by IS 'Event ID of the redaction applied to this event''s stored JSON, if any.';
CREATE INDEX events_room_member_idx ON events (room_nid, state_key_nid) WHERE type_nid = 5;

CREATE TABLE event_json (
    event_nid BIGINT PRIMARY KEY REFERENCES events (event_nid),
    json BYTEA NOT NULL
);
COMMENT ON TABLE event_json IS 'The PDU of each event as stored: canonical JSON, redacted in place once a redaction applies.';
COMMENT ON COLUMN event_json.event_nid IS 'The event.';
COMMENT ON COLUMN event_json.json IS 'UTF-8 JSON of the PDU (the redacted form after redaction; never restored).';

CREATE TABLE event_prevs (
    prev_event_id TEXT NOT NULL,
    event_nid BIGINT NOT NULL REFERENCES events (event_nid),
    PRIMARY KEY (prev_event_id, event_nid)
);
COMMENT ON TABLE event_prevs IS 'prev_events references of stored events: answers "is this event referenced?" for extremities and gap filling.';
COMMENT ON COLUMN event_prevs.prev_event_id IS 'An event ID named in prev_events (it may not be stored).';
COMMENT ON COLUMN event_prevs.event_nid IS 'The stored event that names it.';

-- State: blocks and snapshots -----------------------------------------------------------------

CREATE TABLE state_blocks (
    block_nid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_nid BIGINT NOT NULL,
    hash BYTEA NOT NULL UNIQUE,
    entries BYTEA NOT NULL
);
COMMENT ON TABLE state_blocks IS 'One bucket of a full state (a snapshot root): sorted (type NID, state key NID, event NID) triples, shared by every root that has the same bucket.';
COMMENT ON COLUMN state_blocks.block_nid IS 'Numeric block ID.';
COMMENT ON COLUMN state_blocks.room_nid IS 'Room of the block (dedup is per room: the hash covers the room NID).';
COMMENT ON COLUMN state_blocks.hash IS '16-byte BLAKE2b of (room NID, packed entries): the dedup key.';
COMMENT ON COLUMN state_blocks.entries IS 'Packed triples, sorted by (type, state key): see worker.core.stateblocks.pack.';

CREATE TABLE state_snapshots (
    snapshot_nid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_nid BIGINT NOT NULL,
    hash BYTEA NOT NULL UNIQUE,
    parent_nid BIGINT NOT NULL,
    rank SMALLINT NOT NULL,
    block_nids BIGINT[],
    delta BYTEA
);
COMMENT ON TABLE state_snapshots IS 'A state: a root (full state in bucket blocks) or a layer (a delta block over a parent snapshot). Immutable.';
COMMENT ON COLUMN state_snapshots.snapshot_nid IS 'Numeric snapshot ID (0 is the empty state and has no row).';
COMMENT ON COLUMN state_snapshots.room_nid IS 'Room of the snapshot.';
COMMENT ON COLUMN state_snapshots.hash IS '16-byte BLAKE2b of (room NID, parent, rank, block NIDs, delta): the dedup key.';
COMMENT ON COLUMN state_snapshots.parent_nid IS 'Snapshot this layer applies to; 0 for a root.';
COMMENT ON COLUMN state_snapshots.rank IS 'Merge rank of a layer (a rank-r layer merges 4^r single deltas); -1 for a root.';
COMMENT ON COLUMN state_snapshots.block_nids IS 'For a root: its bucket blocks in bucket order; NULL for a layer.';
COMMENT ON COLUMN state_snapshots.delta IS 'For a layer: its delta block inline (packed triples; event NID 0 removes the key); NULL for a root.';

-- Memberships, invites, redactions ----------------------------------------------------------

CREATE TABLE memberships (
    room_nid BIGINT NOT NULL,
    target_nid BIGINT NOT NULL,
    membership SMALLINT NOT NULL,
    event_nid BIGINT NOT NULL,
    PRIMARY KEY (room_nid, target_nid)
);
COMMENT ON TABLE memberships IS 'Membership of each user in each room per the current state (kept in step with rooms.current_snapshot_nid).';
COMMENT ON COLUMN memberships.room_nid IS 'The room.';
COMMENT ON COLUMN memberships.target_nid IS 'State key NID of the user.';
COMMENT ON COLUMN memberships.membership IS '1 leave, 2 invite, 3 join, 4 knock, 5 ban, 0 other.';
COMMENT ON COLUMN memberships.event_nid IS 'The m.room.member event in the current state.';
CREATE INDEX memberships_target_idx ON memberships (target_nid);

CREATE TABLE invites (
    invite_event_nid BIGINT PRIMARY KEY,
    room_nid BIGINT NOT NULL,
    target_nid BIGINT NOT NULL,
    retired BOOLEAN NOT NULL DEFAULT false
);
COMMENT ON TABLE invites IS 'Invite events that entered the current state; retired once the membership moves on.';
COMMENT ON COLUMN invites.invite_event_nid IS 'The invite m.room.member event.';
COMMENT ON COLUMN invites.room_nid IS 'The room.';
COMMENT ON COLUMN invites.target_nid IS 'State key NID of the invited user.';
COMMENT ON COLUMN invites.retired IS 'True once the user joined, left, was banned or the invite was reset away.';
CREATE INDEX invites_active_idx ON invites (target_nid, room_nid) WHERE NOT retired;

CREATE TABLE redactions (
    redaction_event_id TEXT PRIMARY KEY,
    target_event_id TEXT NOT NULL,
    applied BOOLEAN NOT NULL DEFAULT false
);
COMMENT ON TABLE redactions IS 'Accepted redaction events and their targets, in either arrival order.';
COMMENT ON COLUMN redactions.redaction_event_id IS 'The m.room.redaction event.';
COMMENT ON COLUMN redactions.target_event_id IS 'The event it redacts (may not be stored yet).';
COMMENT ON COLUMN redactions.applied IS 'True once the target''s stored JSON was rewritten to its redacted form.';
CREATE INDEX redactions_target_idx ON redactions (target_event_id);

-- Outbox --------------------------------------------------------------------------------------

CREATE TABLE outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    output_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    output_type TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at TIMESTAMPTZ
);
COMMENT ON TABLE outbox IS 'Outputs committed with their event, published by the relay (DESIGN §2 step 9).';
COMMENT ON COLUMN outbox.seq IS 'Commit order within the table; the relay publishes in this order.';
COMMENT ON COLUMN outbox.output_id IS 'Stable output ID, sent as Nats-Msg-Id; re-running an input inserts nothing new.';
COMMENT ON COLUMN outbox.room_id IS 'Room of the output (its subject).';
COMMENT ON COLUMN outbox.output_type IS 'Output-Type header value, e.g. new_room_event.';
COMMENT ON COLUMN outbox.payload IS 'The encoded output envelope.';
COMMENT ON COLUMN outbox.created_at IS 'Commit time, for the outbox lag metric.';
COMMENT ON COLUMN outbox.sent_at IS 'When the relay published it; NULL while unsent.';
CREATE INDEX outbox_unsent_idx ON outbox (room_id, seq) WHERE sent_at IS NULL;
