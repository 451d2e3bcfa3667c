-- WASIp3 concurrency per instance, per deployment version: how many requests
-- one instance serves at once (1, the default, is one at a time); and per
-- tier, the most a deployment of the tier may ask for.

ALTER TABLE deployment_versions ADD COLUMN max_instance_concurrency BIGINT NOT NULL DEFAULT 1;
ALTER TABLE tiers ADD COLUMN max_instance_concurrency BIGINT NOT NULL DEFAULT 100;
