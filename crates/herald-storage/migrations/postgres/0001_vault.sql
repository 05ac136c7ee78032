-- Herald's first schema on PostgreSQL: settings, API tokens, vaults, topics,
-- secrets with their versions and lifecycle markers, and the event log.
-- Equivalent to migrations/sqlite/0001_vault.sql plus the columns SQLite's
-- later migrations add to these tables (topics: input_schema,
-- input_mapping, key1, key2). Timestamps are unix seconds (BIGINT).
--
-- Columns that lists are ordered and paged by use COLLATE "C", so order is
-- byte order, as in SQLite, whatever the database's default collation.

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
    created BIGINT NOT NULL
);
CREATE INDEX api_tokens_role ON api_tokens (role);

CREATE TABLE vaults (
    id               TEXT PRIMARY KEY,
    name             TEXT COLLATE "C" NOT NULL UNIQUE,
    retention_days   BIGINT NOT NULL,
    purge_protection BOOLEAN NOT NULL,
    near_expiry_secs BIGINT NOT NULL,
    created          BIGINT NOT NULL
);

-- Topics own event logs. Each vault gets a system topic created with it;
-- the router creates `custom` ones (vault_id NULL).
CREATE TABLE topics (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    name          TEXT COLLATE "C" NOT NULL UNIQUE,
    arm_id        TEXT NOT NULL,
    vault_id      TEXT REFERENCES vaults(id) ON DELETE CASCADE,
    created       BIGINT NOT NULL,
    input_schema  TEXT NOT NULL DEFAULT 'EventGridSchema',
    input_mapping TEXT,
    -- Access keys, sealed with the master key (NULL for system topics).
    key1          BYTEA,
    key2          BYTEA
);
CREATE INDEX topics_vault ON topics (vault_id, kind) WHERE vault_id IS NOT NULL;

CREATE TABLE secrets (
    vault_id        TEXT NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    name_key        TEXT COLLATE "C" NOT NULL,
    name            TEXT NOT NULL,
    current_ordinal BIGINT NOT NULL,
    deleted_at      BIGINT,
    purge_at        BIGINT,
    PRIMARY KEY (vault_id, name_key)
);
CREATE INDEX secrets_purge ON secrets (purge_at) WHERE purge_at IS NOT NULL;

-- value and wrapped_key are ciphertext (see herald-vault's seal module).
-- near_expiry_done / expired_done are the lifecycle markers: set exactly
-- once by a conditional UPDATE, in the transaction that logs the event.
CREATE TABLE secret_versions (
    vault_id         TEXT NOT NULL,
    name_key         TEXT COLLATE "C" NOT NULL,
    ordinal          BIGINT NOT NULL,
    version          TEXT NOT NULL,
    enabled          BOOLEAN NOT NULL,
    nbf              BIGINT,
    exp              BIGINT,
    created          BIGINT NOT NULL,
    updated          BIGINT NOT NULL,
    content_type     TEXT,
    tags             TEXT NOT NULL,
    value            BYTEA NOT NULL,
    wrapped_key      BYTEA NOT NULL,
    near_expiry_done BOOLEAN NOT NULL DEFAULT FALSE,
    expired_done     BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (vault_id, name_key, ordinal),
    FOREIGN KEY (vault_id, name_key) REFERENCES secrets (vault_id, name_key) ON DELETE CASCADE
);
CREATE UNIQUE INDEX secret_versions_version ON secret_versions (vault_id, name_key, version);
CREATE INDEX secret_versions_pending_expiry ON secret_versions (exp)
    WHERE exp IS NOT NULL AND NOT expired_done;

-- The durable, append-only event log. seq orders events per topic.
-- (No foreign key to topics, as in SQLite: deleting a custom topic deletes
-- its events explicitly.)
CREATE TABLE event_log (
    seq        BIGINT PRIMARY KEY,
    topic_id   TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    event_type TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    created    BIGINT NOT NULL DEFAULT (EXTRACT(EPOCH FROM now())::BIGINT)
);
CREATE INDEX event_log_topic ON event_log (topic_id, seq);
CREATE SEQUENCE event_log_seq_seq AS BIGINT OWNED BY event_log.seq;

-- Readers follow a topic with a cursor (`seq > cursor`), which is only
-- safe if, per topic, seq order is commit order: a plain sequence lets a
-- transaction holding seq 10 commit after one holding seq 11, and a reader
-- that saw 11 would skip 10 forever. So every insert into event_log (from
-- any code path: vault events, router publishes) first takes a
-- transaction-scoped advisory lock on its topic and only then draws its
-- seq; the lock is released after the commit is visible, so the next
-- appender to that topic gets a larger seq and commits later. Appends to
-- different topics do not wait on each other. Inserts leave seq unset
-- and use `RETURNING seq` to learn it.
CREATE FUNCTION event_log_assign_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('herald:event_log'), hashtext(NEW.topic_id));
    -- `herald migrate` copies logs with their original numbers; everything
    -- else leaves seq unset and draws the next one under the topic lock.
    IF NEW.seq IS NULL THEN
        NEW.seq := nextval('event_log_seq_seq');
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER event_log_assign_seq BEFORE INSERT ON event_log
    FOR EACH ROW EXECUTE FUNCTION event_log_assign_seq();
