-- Standard Webhooks signing secrets of webhook subscriptions, sealed with
-- the master key. During a rotation the old secret stays active until
-- retire_at, so receivers can switch without dropping deliveries.
CREATE TABLE signing_secrets (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES event_subscriptions(id) ON DELETE CASCADE,
    sealed          BLOB NOT NULL,
    created         INTEGER NOT NULL,
    retire_at       INTEGER
);
CREATE INDEX signing_secrets_subscription ON signing_secrets (subscription_id);
