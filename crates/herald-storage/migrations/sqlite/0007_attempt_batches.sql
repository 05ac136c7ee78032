-- The delivery log keeps one row per request: the events of a batch share
-- its status, latency and response, so they are written once. seq and
-- event_id name the first event; more_event_ids is a JSON array of the
-- others, in order (NULL for a single event).
ALTER TABLE delivery_attempts ADD COLUMN event_count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE delivery_attempts ADD COLUMN more_event_ids TEXT;
