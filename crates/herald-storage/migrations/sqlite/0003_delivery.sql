-- Push delivery: the status code of the last attempt, the validation
-- handshake of webhook subscriptions, and the delivery log.

ALTER TABLE subscription_messages ADD COLUMN last_status INTEGER;
ALTER TABLE subscription_messages ADD COLUMN last_attempt_at INTEGER;

-- Manual validation: the code sent to the endpoint and a hash of the
-- secret token in the validationUrl.
CREATE TABLE subscription_validations (
    subscription_id TEXT PRIMARY KEY REFERENCES event_subscriptions(id) ON DELETE CASCADE,
    code            TEXT NOT NULL,
    token_hash      TEXT NOT NULL UNIQUE,
    expires_at      INTEGER NOT NULL
);

-- One row per delivery attempt of one event (times in unix ms).
CREATE TABLE delivery_attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES event_subscriptions(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    event_id        TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    at              INTEGER NOT NULL,
    status          INTEGER,
    latency_ms      INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    response        TEXT
);
CREATE INDEX delivery_attempts_subscription ON delivery_attempts (subscription_id, id);
CREATE INDEX delivery_attempts_at ON delivery_attempts (at);

ALTER TABLE dead_letters ADD COLUMN last_status INTEGER;
ALTER TABLE dead_letters ADD COLUMN last_attempt_at INTEGER;
