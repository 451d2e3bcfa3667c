-- Canary rollouts: a new version (the canary) serves a share of its
-- deployment's requests while the live version (the stable one) serves the
-- rest. One row per rollout, kept after it ends (its state and reason are
-- the versions API's); at most one runs per deployment.
--
-- `steps` are the shares to go through (JSON array of percents); `step`
-- indexes the one in force, `next_at` is when the next is due (NULL with
-- none left). A step reaching 100 promotes the canary. A node stops a
-- canary whose error rate exceeds the stable version's by more than
-- `max_error_increase` percentage points once it has seen `min_requests`
-- of the canary's requests.
CREATE TABLE rollouts (
    deployment_id      TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    version            BIGINT NOT NULL,
    stable             BIGINT NOT NULL,
    state              TEXT NOT NULL,   -- running, promoted, rolled_back, stopped, replaced
    percent            BIGINT NOT NULL,
    steps              TEXT NOT NULL,
    step               BIGINT NOT NULL DEFAULT 0,
    interval_ms        BIGINT NOT NULL DEFAULT 0,
    next_at            BIGINT,
    sticky_header      TEXT NOT NULL DEFAULT '',
    min_requests       BIGINT NOT NULL,
    max_error_increase BIGINT NOT NULL,
    reason             TEXT NOT NULL DEFAULT '',
    started_at         BIGINT NOT NULL,
    ended_at           BIGINT,
    PRIMARY KEY (deployment_id, version)
);
CREATE UNIQUE INDEX rollouts_running ON rollouts (deployment_id) WHERE state = 'running';

-- Whether a request may choose a served version with `wasmwiz-version: N`
-- (set by each deploy, for the deployment).
ALTER TABLE deployments ADD COLUMN version_pinning BIGINT NOT NULL DEFAULT 0;
