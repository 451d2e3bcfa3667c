-- Route grants: what a tenant may deploy inside beyond its default
-- `/<tenant-name>/...` (and `<tenant-name>.<WASMWIZ_BASE_DOMAIN>`, which is
-- not stored). A row grants either a host-less route pattern (`route`,
-- `/shop/...`: every route at or below it) or a host (`host`: every route
-- bound to it). Grants of two tenants never overlap (checked when granting;
-- the unique indexes stop two identical grants).

CREATE TABLE route_grants (
    id         TEXT PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    route      TEXT NOT NULL DEFAULT '',
    host       TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    CHECK ((route = '') <> (host = ''))
);
CREATE INDEX route_grants_tenant ON route_grants (tenant_id);
CREATE UNIQUE INDEX route_grants_route ON route_grants (route) WHERE route <> '';
CREATE UNIQUE INDEX route_grants_host ON route_grants (host) WHERE host <> '';

-- Every switch of a deployment's live version, in order (`seq` per
-- deployment). `parent` is the switch that was current before this one: a
-- rollback returns to it, so repeated rollbacks walk back through what was
-- live, and a deploy after a rollback does not bring the rolled-away
-- version back. `reason`: deploy, rollback, or rollback_to (a chosen
-- version).

CREATE TABLE deployment_switches (
    deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    parent        BIGINT,
    reason        TEXT NOT NULL,
    at            BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);

-- The history of a deployment made before this migration is not known:
-- its versions up to the live one count as deployed in order.
INSERT INTO deployment_switches (deployment_id, seq, version, parent, reason, at)
SELECT v.deployment_id, v.version, v.version,
       CASE WHEN v.version > 1 THEN v.version - 1 END, 'deploy', v.created_at
FROM deployment_versions v
JOIN deployments d ON d.id = v.deployment_id
WHERE v.version <= d.live_version;
