-- Hubs (Event Hubs): namespaces, hubs, their partitions, consumer groups,
-- SAS policies, the partition logs and server-side checkpoints.
--
-- A partition's log is a run of segments: one append (a REST batch, an
-- AMQP transfer) is one row holding all its events, encoded by
-- herald-hubs (event.rs). Sequence numbers are dense per partition: the
-- partition row's next_seq is advanced in the same transaction that
-- inserts the segment. Times are epoch milliseconds.
-- Ported from migrations/sqlite/0008_hubs.sql; BIGINT and BYTEA for INTEGER and BLOB.

CREATE TABLE hub_namespaces (
    id      TEXT COLLATE "C" PRIMARY KEY,
    key     TEXT COLLATE "C" NOT NULL UNIQUE,          -- lower-cased name
    name    TEXT NOT NULL,
    created BIGINT NOT NULL
);

CREATE TABLE hubs (
    id              TEXT COLLATE "C" PRIMARY KEY,
    namespace_id    TEXT NOT NULL REFERENCES hub_namespaces(id) ON DELETE CASCADE,
    key             TEXT NOT NULL,         -- lower-cased name
    name            TEXT NOT NULL,
    partition_count BIGINT NOT NULL,
    retention_hours BIGINT NOT NULL,
    created         BIGINT NOT NULL,
    updated         BIGINT NOT NULL,
    UNIQUE (namespace_id, key)
);

CREATE TABLE hub_partitions (
    hub_id        TEXT NOT NULL REFERENCES hubs(id) ON DELETE CASCADE,
    partition     BIGINT NOT NULL,
    begin_seq     BIGINT NOT NULL DEFAULT 0, -- first retained sequence number
    next_seq      BIGINT NOT NULL DEFAULT 0, -- the next append's first sequence number
    last_enqueued BIGINT NOT NULL DEFAULT 0,
    events_in     BIGINT NOT NULL DEFAULT 0,
    bytes_in      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hub_id, partition)
);

CREATE TABLE hub_segments (
    hub_id    TEXT NOT NULL REFERENCES hubs(id) ON DELETE CASCADE,
    partition BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    count     BIGINT NOT NULL,
    bytes     BIGINT NOT NULL,
    enqueued  BIGINT NOT NULL,
    payload   BYTEA NOT NULL,
    PRIMARY KEY (hub_id, partition, first_seq)
);

CREATE TABLE hub_consumer_groups (
    hub_id        TEXT NOT NULL REFERENCES hubs(id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    name          TEXT NOT NULL,
    user_metadata TEXT NOT NULL DEFAULT '',
    created       BIGINT NOT NULL,
    PRIMARY KEY (hub_id, key)
);

-- A policy sits on a namespace (hub_id '') or on one hub. Keys are
-- sealed with the master key: SAS verification needs the key itself.
CREATE TABLE hub_policies (
    namespace_id  TEXT NOT NULL REFERENCES hub_namespaces(id) ON DELETE CASCADE,
    hub_id        TEXT NOT NULL DEFAULT '',
    key           TEXT NOT NULL,
    name          TEXT NOT NULL,
    rights        TEXT NOT NULL,           -- JSON array, Azure's names
    primary_key   BYTEA NOT NULL,
    secondary_key BYTEA NOT NULL,
    created       BIGINT NOT NULL,
    updated       BIGINT NOT NULL,
    PRIMARY KEY (namespace_id, hub_id, key)
);

CREATE TABLE hub_checkpoints (
    hub_id    TEXT NOT NULL REFERENCES hubs(id) ON DELETE CASCADE,
    group_key TEXT NOT NULL,
    partition BIGINT NOT NULL,
    seq       BIGINT NOT NULL,            -- the last sequence number processed
    updated   BIGINT NOT NULL,
    PRIMARY KEY (hub_id, group_key, partition)
);
