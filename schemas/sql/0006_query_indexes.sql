-- 0006: indexes for the queries the rest of a homeserver asks (worker.storage.homeserver_reads).
--
-- Both are over `memberships`, which the pipeline already keeps in step with each room's
-- current state in the event's own transaction: no new table, no new write step. A user in
-- thousands of rooms and a room of tens of thousands of members are each one index range.

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
