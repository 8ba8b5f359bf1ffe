-- 0007: room_joined_counts kept by statement triggers instead of row triggers.
--
-- A row trigger updates the room's count row once per joined member written. A federated
-- join into a big room writes the membership of every member in one statement (the first
-- current state of the room), so the same row was updated tens of thousands of times in one
-- transaction; each update walks the row's chain of versions made by the ones before it,
-- which made that one statement quadratic (seconds for a 30,000-member room). A statement
-- trigger sees every row the statement wrote at once (its transition tables) and changes
-- each room's count once, by the net difference. A statement that writes no row still fires
-- it, for the cost of one empty aggregate.
--
-- Transition tables cannot go with a column list, so the UPDATE trigger fires on any update
-- of memberships and counts the net change itself. INSERT ... ON CONFLICT DO UPDATE (how the
-- pipeline upserts memberships) fires the INSERT trigger with the inserted rows and the
-- UPDATE trigger with the updated ones.

DROP TRIGGER memberships_joined_insert ON memberships;
DROP TRIGGER memberships_joined_update ON memberships;
DROP TRIGGER memberships_joined_delete ON memberships;
DROP FUNCTION count_joined_members();

CREATE FUNCTION count_joined_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO room_joined_counts AS c (room_nid, joined)
    SELECT room_nid, count(*) FROM added WHERE membership = 3 GROUP BY room_nid
    ON CONFLICT (room_nid) DO UPDATE SET joined = c.joined + EXCLUDED.joined;
    RETURN NULL;
END
$$;

CREATE FUNCTION count_joined_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO room_joined_counts AS c (room_nid, joined)
    SELECT room_nid, sum(d) FROM (
        SELECT room_nid, 1 AS d FROM after_rows WHERE membership = 3
        UNION ALL
        SELECT room_nid, -1 AS d FROM before_rows WHERE membership = 3
    ) changes
    GROUP BY room_nid HAVING sum(d) <> 0
    ON CONFLICT (room_nid) DO UPDATE SET joined = c.joined + EXCLUDED.joined;
    RETURN NULL;
END
$$;

CREATE FUNCTION count_joined_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE room_joined_counts c SET joined = c.joined - gone.n
    FROM (SELECT room_nid, count(*) AS n FROM removed WHERE membership = 3 GROUP BY room_nid) gone
    WHERE c.room_nid = gone.room_nid;
    RETURN NULL;
END
$$;

CREATE TRIGGER memberships_joined_inserted AFTER INSERT ON memberships
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION count_joined_inserted();
CREATE TRIGGER memberships_joined_updated AFTER UPDATE ON memberships
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_joined_updated();
CREATE TRIGGER memberships_joined_deleted AFTER DELETE ON memberships
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION count_joined_deleted();
