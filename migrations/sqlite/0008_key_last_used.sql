-- When each API key last authenticated a request (Unix milliseconds), for
-- the key list: written by the nodes at most once a minute per key.
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
