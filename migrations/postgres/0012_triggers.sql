-- Events beyond HTTP requests: schedules (cron, or @every) and queues,
-- each delivered as an HTTP request to one of the tenant's deployments.

CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    tenant_id     BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    deployment_id TEXT NOT NULL,
    spec          TEXT NOT NULL,        -- five-field cron (UTC), or @every <duration>
    path          TEXT NOT NULL,
    method        TEXT NOT NULL,
    body          TEXT NOT NULL,
    -- The next time it is due (Unix ms). A node claims a due time by moving
    -- this forward (compare and set): one node per due time.
    next_due      BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    deleted_at    BIGINT
);
CREATE INDEX schedules_due ON schedules (next_due) WHERE deleted_at IS NULL;
CREATE INDEX schedules_tenant ON schedules (tenant_id);

-- Every firing: claimed by a node (which keeps claimed_at fresh while it
-- fires; started_at is when it made the request), then recorded with its answer. A claim left stale by a node that
-- died is taken over by another.
CREATE TABLE schedule_runs (
    schedule_id TEXT NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    due_at      BIGINT NOT NULL,
    node        TEXT NOT NULL,
    claimed_at  BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,  -- when the request was made (lateness)
    fired_at    BIGINT,
    status      BIGINT,
    outcome     TEXT,
    PRIMARY KEY (schedule_id, due_at)
);
CREATE INDEX schedule_runs_open ON schedule_runs (claimed_at) WHERE fired_at IS NULL;

CREATE TABLE queues (
    id                   TEXT PRIMARY KEY,
    tenant_id            BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                 TEXT NOT NULL,
    deployment_id        TEXT NOT NULL,
    path                 TEXT NOT NULL,
    max_attempts         BIGINT NOT NULL,
    visibility_timeout_s BIGINT NOT NULL,
    created_at           BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

-- Messages of the queues kept in the store (without REDIS_URL).
CREATE TABLE queue_messages (
    queue_id     TEXT NOT NULL REFERENCES queues (id) ON DELETE CASCADE,
    id           TEXT NOT NULL,
    body         BYTEA NOT NULL,
    content_type TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    visible_at   BIGINT NOT NULL,     -- Unix ms: deliverable from then on
    created_at   BIGINT NOT NULL,
    dead         BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (queue_id, id)
);
CREATE INDEX queue_messages_ready ON queue_messages (queue_id, dead, visible_at);

ALTER TABLE tiers ADD COLUMN max_schedules BIGINT NOT NULL DEFAULT 20;
ALTER TABLE tiers ADD COLUMN min_schedule_interval_s BIGINT NOT NULL DEFAULT 10;
ALTER TABLE tiers ADD COLUMN max_queues BIGINT NOT NULL DEFAULT 10;
ALTER TABLE tiers ADD COLUMN max_message_bytes BIGINT NOT NULL DEFAULT 262144;
ALTER TABLE tiers ADD COLUMN max_publishes_per_second BIGINT NOT NULL DEFAULT 1000;
ALTER TABLE tiers ADD COLUMN max_queue_backlog BIGINT NOT NULL DEFAULT 100000;
