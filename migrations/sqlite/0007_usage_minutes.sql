-- Per-tenant usage per UTC minute, for charts of the last hour: written by
-- each node with the day rows (`usage`), in the same batches, and pruned by
-- the nodes after two days.

CREATE TABLE usage_minutes (
    tenant_id      BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    minute         BIGINT NOT NULL,           -- minutes since 1970-01-01, UTC
    invocations    BIGINT NOT NULL DEFAULT 0,
    errors_trap    BIGINT NOT NULL DEFAULT 0,
    errors_timeout BIGINT NOT NULL DEFAULT 0,
    errors_oom     BIGINT NOT NULL DEFAULT 0,
    errors_other   BIGINT NOT NULL DEFAULT 0,
    wall_ms        BIGINT NOT NULL DEFAULT 0,
    kv_reads       BIGINT NOT NULL DEFAULT 0,
    kv_writes      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, minute)
);

CREATE INDEX usage_minutes_by_minute ON usage_minutes (minute);
