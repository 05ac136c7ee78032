-- Herald's first schema: settings, API tokens, vaults, secrets, and the event log.
-- Timestamps are unix seconds (what Key Vault puts on the wire).

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Only the SHA-256 of a token is kept; tokens carry 256 random bits.
CREATE TABLE api_tokens (
    hash    TEXT PRIMARY KEY,
    id      TEXT NOT NULL UNIQUE,
    name    TEXT NOT NULL,
    role    TEXT NOT NULL,
    created INTEGER NOT NULL
);

CREATE TABLE vaults (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    retention_days   INTEGER NOT NULL,
    purge_protection INTEGER NOT NULL,
    near_expiry_secs INTEGER NOT NULL,
    created          INTEGER NOT NULL
);

-- Topics own event logs. Each vault gets a system topic created with it.
CREATE TABLE topics (
    id       TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    arm_id   TEXT NOT NULL,
    vault_id TEXT REFERENCES vaults(id) ON DELETE CASCADE,
    created  INTEGER NOT NULL,
    UNIQUE (name)
);

CREATE TABLE secrets (
    vault_id        TEXT NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    name_key        TEXT NOT NULL,
    name            TEXT NOT NULL,
    current_ordinal INTEGER NOT NULL,
    deleted_at      INTEGER,
    purge_at        INTEGER,
    PRIMARY KEY (vault_id, name_key)
);
CREATE INDEX secrets_purge ON secrets (purge_at) WHERE purge_at IS NOT NULL;

-- value and wrapped_key are ciphertext (see herald-vault's seal module).
CREATE TABLE secret_versions (
    vault_id         TEXT NOT NULL,
    name_key         TEXT NOT NULL,
    ordinal          INTEGER NOT NULL,
    version          TEXT NOT NULL,
    enabled          INTEGER NOT NULL,
    nbf              INTEGER,
    exp              INTEGER,
    created          INTEGER NOT NULL,
    updated          INTEGER NOT NULL,
    content_type     TEXT,
    tags             TEXT NOT NULL,
    value            BLOB NOT NULL,
    wrapped_key      BLOB NOT NULL,
    near_expiry_done INTEGER NOT NULL DEFAULT 0,
    expired_done     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (vault_id, name_key, ordinal),
    FOREIGN KEY (vault_id, name_key) REFERENCES secrets (vault_id, name_key) ON DELETE CASCADE
);
CREATE UNIQUE INDEX secret_versions_version ON secret_versions (vault_id, name_key, version);
CREATE INDEX secret_versions_pending_expiry ON secret_versions (exp)
    WHERE exp IS NOT NULL AND expired_done = 0;

-- The durable, append-only event log. seq orders events per topic.
CREATE TABLE event_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic_id   TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    event_type TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    created    INTEGER NOT NULL
);
CREATE INDEX event_log_topic ON event_log (topic_id, seq);
