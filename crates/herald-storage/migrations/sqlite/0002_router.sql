-- The router: topic settings and keys, event subscriptions, per-subscription
-- in-flight messages, dead letters and durable counters.
--
-- A subscription reads its topic's event_log through a cursor; a row in
-- subscription_messages exists only while an event is in flight (locked,
-- released for later, or awaiting retry), so publish cost does not grow
-- with the number of subscriptions.

ALTER TABLE topics ADD COLUMN input_schema TEXT NOT NULL DEFAULT 'EventGridSchema';
ALTER TABLE topics ADD COLUMN input_mapping TEXT;
-- Access keys, sealed with the master key.
ALTER TABLE topics ADD COLUMN key1 BLOB;
ALTER TABLE topics ADD COLUMN key2 BLOB;

CREATE TABLE event_subscriptions (
    id                 TEXT PRIMARY KEY,
    topic_id           TEXT NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    config             TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    state_reason       TEXT,
    cursor_seq         INTEGER NOT NULL,
    created            INTEGER NOT NULL,
    updated            INTEGER NOT NULL,
    UNIQUE (topic_id, name)
);

-- Times are unix milliseconds.
CREATE TABLE subscription_messages (
    subscription_id TEXT NOT NULL REFERENCES event_subscriptions(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    state           TEXT NOT NULL,
    available_at    INTEGER NOT NULL,
    lock_token      TEXT,
    lock_expires_at INTEGER,
    first_locked_at INTEGER,
    delivery_count  INTEGER NOT NULL DEFAULT 0,
    enqueued_at     INTEGER NOT NULL,
    last_outcome    TEXT,
    PRIMARY KEY (subscription_id, seq)
);
CREATE INDEX subscription_messages_due ON subscription_messages (subscription_id, available_at);

CREATE TABLE dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES event_subscriptions(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    body            TEXT NOT NULL,
    reason          TEXT NOT NULL,
    delivery_count  INTEGER NOT NULL,
    last_outcome    TEXT,
    published_at    INTEGER NOT NULL,
    dead_lettered_at INTEGER NOT NULL
);
CREATE INDEX dead_letters_subscription ON dead_letters (subscription_id, id);

-- Durable counters for the Events metrics (scope = topic or subscription id).
CREATE TABLE counters (
    scope TEXT NOT NULL,
    name  TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (scope, name)
);
