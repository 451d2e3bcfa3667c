-- Per tier, the most invocations one tenant may run at once on one node
-- (NULL: no cap beyond the instance pool's fair share). Existing tiers get
-- the default cap, as a new store would.

ALTER TABLE tiers ADD COLUMN max_concurrency BIGINT DEFAULT 100;
