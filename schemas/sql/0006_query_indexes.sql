-- 0006: indexes for the queries the rest of a homeserver asks (worker.storage.homeserver_reads).
--
-- All over `memberships`, which the pipeline already keeps in step with each room's current
-- state in the event's own transaction: two indexes (a user in thousands of rooms and a room
-- of tens of thousands of members are each one index range) and a per-room joined count
-- kept by triggers on it (no change to the statements that write events).

-- "Which rooms is this user joined to / invited to", "who shares a room with this user":
-- one range per (user, membership), and the room NIDs come from the index alone. It
-- replaces memberships_target_idx (target_nid alone), whose every use it also serves, so a
-- membership write still updates the same number of indexes on this side.
CREATE INDEX memberships_user_idx ON memberships (target_nid, membership) INCLUDE (room_nid);
DROP INDEX memberships_target_idx;

-- "How many are joined", "which of them are ours", "who is joined to the rooms I am in":
-- the joined members of a room as one index range, counted without visiting the table
-- (an index-only scan) where the visibility map allows. The primary key (room_nid,
-- target_nid) could range over the room too, but would read every row for its membership.
CREATE INDEX memberships_room_idx ON memberships (room_nid, membership) INCLUDE (target_nid);

-- "How many are joined" for a room of tens of thousands, in one row read: a count kept by
-- triggers on `memberships`, so in the same transaction as the membership change and so as
-- the event. Row triggers, and only on rows whose joined-ness changes (the WHEN clauses):
-- an event that changes no membership fires nothing, a join or leave fires once. (A
-- statement trigger would fire for every event, since every event's FINISH_EVENT statement
-- has a memberships INSERT and DELETE in it, rows or not.)
CREATE TABLE room_joined_counts (
    room_nid BIGINT PRIMARY KEY,
    joined BIGINT NOT NULL
);
COMMENT ON TABLE room_joined_counts IS 'Joined members per room in the current state: the rows of memberships with membership 3, counted by triggers in the same transaction.';
COMMENT ON COLUMN room_joined_counts.room_nid IS 'The room.';
COMMENT ON COLUMN room_joined_counts.joined IS 'How many users are joined (0 once all left; the row stays).';
ALTER TABLE room_joined_counts SET (autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = 10000);

CREATE FUNCTION count_joined_members() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.membership = 3 THEN
        UPDATE room_joined_counts SET joined = joined - 1 WHERE room_nid = OLD.room_nid;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.membership = 3 THEN
        INSERT INTO room_joined_counts AS c (room_nid, joined) VALUES (NEW.room_nid, 1)
        ON CONFLICT (room_nid) DO UPDATE SET joined = c.joined + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER memberships_joined_insert AFTER INSERT ON memberships
    FOR EACH ROW WHEN (NEW.membership = 3) EXECUTE FUNCTION count_joined_members();
CREATE TRIGGER memberships_joined_update AFTER UPDATE OF membership ON memberships
    FOR EACH ROW WHEN ((OLD.membership = 3) IS DISTINCT FROM (NEW.membership = 3))
    EXECUTE FUNCTION count_joined_members();
CREATE TRIGGER memberships_joined_delete AFTER DELETE ON memberships
    FOR EACH ROW WHEN (OLD.membership = 3) EXECUTE FUNCTION count_joined_members();

INSERT INTO room_joined_counts (room_nid, joined)
SELECT room_nid, count(*) FROM memberships WHERE membership = 3 GROUP BY room_nid;
