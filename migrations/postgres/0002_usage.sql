-- Per-tenant usage, one row per UTC day, written in batches by each node.

CREATE TABLE usage (
    tenant_id      BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day            BIGINT NOT NULL,           -- days since 1970-01-01, UTC
    invocations    BIGINT NOT NULL DEFAULT 0,
    errors_trap    BIGINT NOT NULL DEFAULT 0, -- traps and stack overflows
    errors_timeout BIGINT NOT NULL DEFAULT 0,
    errors_oom     BIGINT NOT NULL DEFAULT 0,
    errors_other   BIGINT NOT NULL DEFAULT 0, -- no response, error answers
    wall_ms        BIGINT NOT NULL DEFAULT 0, -- guest wall time
    PRIMARY KEY (tenant_id, day)
);
