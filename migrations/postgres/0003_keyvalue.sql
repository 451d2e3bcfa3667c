-- Key-value data of components (wasi:keyvalue) when no Redis is configured,
-- with per-tenant totals for the tier's limits, and the tiers' limits.

ALTER TABLE tiers ADD COLUMN kv_max_key_bytes BIGINT NOT NULL DEFAULT 256;
ALTER TABLE tiers ADD COLUMN kv_max_value_bytes BIGINT NOT NULL DEFAULT 1048576;
ALTER TABLE tiers ADD COLUMN kv_max_keys BIGINT NOT NULL DEFAULT 10000;
ALTER TABLE tiers ADD COLUMN kv_max_total_bytes BIGINT NOT NULL DEFAULT 67108864;

-- One row per key. bucket: 'd:<deployment id>' (a deployment's own bucket)
-- or 's:<name>' (shared by the tenant's deployments).
CREATE TABLE kv_entries (
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    bucket    TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, bucket, key)
);

-- Keys and bytes (keys plus values) a tenant holds; its row is locked by
-- every write of the tenant, which serializes them across nodes.
CREATE TABLE kv_totals (
    tenant_id BIGINT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    keys      BIGINT NOT NULL DEFAULT 0,
    bytes     BIGINT NOT NULL DEFAULT 0
);

-- Key-value operations in the daily usage.
ALTER TABLE usage ADD COLUMN kv_reads BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN kv_writes BIGINT NOT NULL DEFAULT 0;
