-- 0009: an outbox row is marked sent on its own page.
--
-- The relay marks every row sent soon after it is inserted (`UPDATE ... SET sent_at`). An
-- update whose new row version fits on the old one's page is written to the WAL as the bytes
-- that changed (sent_at), not as the whole row with its payload; on a full page the new
-- version goes to another page and the WAL carries the whole row again, payload included,
-- which made marking cost about as much WAL as inserting. Pages filled to half leave room
-- for each of their rows to be rewritten once. The table holds what it holds on twice the
-- pages (rows stay a day after they were sent).
ALTER TABLE outbox SET (fillfactor = 50);
