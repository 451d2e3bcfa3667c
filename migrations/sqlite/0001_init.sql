-- WasmWiz schema, SQLite (the embedded store). Times are Unix milliseconds (BIGINT) so the
-- same queries run on PostgreSQL and on the embedded SQLite store.

CREATE TABLE tiers (
    name                 TEXT PRIMARY KEY,
    requests_per_minute  BIGINT,          -- NULL: unlimited
    requests_per_day     BIGINT,          -- NULL: unlimited
    memory_limit_bytes   BIGINT NOT NULL,
    execution_timeout_ms BIGINT NOT NULL,
    max_input_bytes      BIGINT NOT NULL,
    max_component_bytes  BIGINT NOT NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

CREATE TABLE tenants (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    tier       TEXT NOT NULL REFERENCES tiers (name),
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    prefix     TEXT NOT NULL,
    key_hash   BLOB NOT NULL UNIQUE,     -- HMAC-SHA256(API_SALT, key); never the key
    scopes     TEXT NOT NULL,             -- comma-separated: admin,deploy,read
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE components (
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    digest     TEXT NOT NULL,             -- sha256:<hex> of bytes
    name       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    world      TEXT NOT NULL,
    compile_ms BIGINT NOT NULL,
    bytes      BLOB NOT NULL,            -- in the database, so pg_dump backs up everything
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, digest)
);

CREATE TABLE deployments (
    id           TEXT PRIMARY KEY,
    tenant_id    BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    route        TEXT NOT NULL,
    host         TEXT NOT NULL DEFAULT '',  -- '': any host
    live_version BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    deleted_at   BIGINT
);
-- One live deployment per (host, route).
CREATE UNIQUE INDEX deployments_live_route ON deployments (host, route) WHERE deleted_at IS NULL;
CREATE INDEX deployments_tenant ON deployments (tenant_id);

CREATE TABLE deployment_versions (
    deployment_id          TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    version                BIGINT NOT NULL,
    component              TEXT NOT NULL,
    config                 TEXT NOT NULL DEFAULT '{}',   -- JSON object
    secrets                TEXT NOT NULL DEFAULT '{}',   -- JSON object; values never leave the API
    allowed_outbound_hosts TEXT NOT NULL DEFAULT '[]',   -- JSON array
    created_at             BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, version)
);

-- Settings the nodes share (a development API salt when API_SALT is unset).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Bumped by every change that nodes must pick up (deployments, keys,
-- tenants, tiers); nodes poll it as a safety net under LISTEN/NOTIFY.
CREATE TABLE changes (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO changes (id, seq) VALUES (1, 0);
