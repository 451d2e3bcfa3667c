-- Bounds on what one tenant may keep and start (per tier): stored
-- components (count and bytes), versions kept per deployment, uploads in
-- flight per node, key-value writes per second per node.
ALTER TABLE tiers ADD COLUMN max_components BIGINT NOT NULL DEFAULT 100;
ALTER TABLE tiers ADD COLUMN max_component_storage_bytes BIGINT NOT NULL DEFAULT 1073741824;
ALTER TABLE tiers ADD COLUMN max_uploads_in_flight BIGINT NOT NULL DEFAULT 2;
ALTER TABLE tiers ADD COLUMN max_versions_per_deployment BIGINT NOT NULL DEFAULT 20;
ALTER TABLE tiers ADD COLUMN kv_writes_per_second BIGINT NOT NULL DEFAULT 1000;

-- Secrets belong to the deployment, not to a version: a rollback keeps the
-- current (possibly rotated) values instead of bringing back old ones, and
-- deleting a deployment leaves no secret behind in its history. Values are
-- sealed (encrypted) by the node when it next opens the store; until then
-- they are kept as they were.
ALTER TABLE deployments ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}';
UPDATE deployments SET secrets = COALESCE((
    SELECT v.secrets FROM deployment_versions v
    WHERE v.deployment_id = deployments.id AND v.version = deployments.live_version
), '{}') WHERE deleted_at IS NULL;
UPDATE deployment_versions SET secrets = '{}';
