-- 0008: the outlier member events of a user, across rooms, as one index range.
--
-- An invite to one of our users in a room this server is not in (input kind `invite`) is
-- stored as an outlier of a room with no current state, and so has no `memberships` row.
-- `rooms_for_user` with membership `invite` finds those rooms from the user's outlier member
-- events (worker.storage.invites): one range of this index, then a probe of each room's row.
-- Only outlier member events are indexed (invites, their rejections, and the member events
-- of federated joins' states), not the member events of the rooms' DAGs.
CREATE INDEX events_outlier_member_idx ON events (state_key_nid, room_nid)
    WHERE type_nid = 5 AND kind = 2;
