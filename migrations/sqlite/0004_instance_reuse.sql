-- Instance reuse, per deployment version: how many requests one instance
-- may serve (1, the default, is a fresh instance for every request); and
-- per tier, the most a deployment of the tier may ask for.

ALTER TABLE deployment_versions ADD COLUMN max_instance_reuse BIGINT NOT NULL DEFAULT 1;
ALTER TABLE tiers ADD COLUMN max_instance_reuse BIGINT NOT NULL DEFAULT 10000;
