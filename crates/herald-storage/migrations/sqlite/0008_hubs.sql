-- Hubs (Event Hubs): namespaces, hubs, their partitions, consumer groups,
-- SAS policies, the partition logs and server-side checkpoints.
--
-- A partition's log is a run of segments: one append (a REST batch, an
-- AMQP transfer) is one row holding all its events, encoded by
-- herald-hubs (event.rs). Sequence numbers are dense per partition: the
-- partition row's next_seq is advanced in the same transaction that
-- inserts the segment. Times are epoch milliseconds. Tables keep their
-- rowid: `herald migrate` copies rows in rowid order.

CREATE TABLE hub_namespaces (
    id      TEXT PRIMARY KEY,
    key     TEXT NOT NULL UNIQUE,          -- lower-cased name
    name    TEXT NOT NULL,
    created INTEGER NOT NULL
);

CREATE TABLE hubs (
    id              TEXT PRIMARY KEY,
    namespace_id    TEXT NOT NULL REFERENCES hub_namespaces(id) ON DELETE CASCADE,
    key             TEXT NOT NULL,         -- lower-cased name
    name            TEXT NOT NULL,
    partition_count INTEGER NOT NULL,
    retention_hours INTEGER NOT NULL,
    created         INTEGER NOT NULL,
    updated         INTEGER NOT NULL,
    UNIQUE (namespace_id, key)
);

CREATE TABLE hub_partitions (
    hub_id        TEXT NOT NULL REFERENCES hubs(id) ON DELETE CASCADE,
    partition     INTEGER NOT NULL,
    begin_seq     INTEGER NOT NULL DEFAULT 0, -- first retained sequence number
    next_seq      INTEGER NOT NULL DEFAULT 0, -- the next append's first sequence number
    last_enqueued INTEGER NOT NULL DEFAULT 0,
    events_in     INTEGER NOT NULL DEFAULT 0,
    bytes_in      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hub_id, partition)
);

CREATE TABLE hub_segments (
    hub_id    TEXT NOT NULL REFERENCES hubs(id) ON DELETE CASCADE,
    partition INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    enqueued  INTEGER NOT NULL,
    payload   BLOB NOT NULL,
    PRIMARY KEY (hub_id, partition, first_seq)
);

CREATE TABLE hub_consumer_groups (
    hub_id        TEXT NOT NULL REFERENCES hubs(id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    name          TEXT NOT NULL,
    user_metadata TEXT NOT NULL DEFAULT '',
    created       INTEGER NOT NULL,
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
    primary_key   BLOB NOT NULL,
    secondary_key BLOB NOT NULL,
    created       INTEGER NOT NULL,
    updated       INTEGER NOT NULL,
    PRIMARY KEY (namespace_id, hub_id, key)
);

CREATE TABLE hub_checkpoints (
    hub_id    TEXT NOT NULL REFERENCES hubs(id) ON DELETE CASCADE,
    group_key TEXT NOT NULL,
    partition INTEGER NOT NULL,
    seq       INTEGER NOT NULL,            -- the last sequence number processed
    updated   INTEGER NOT NULL,
    PRIMARY KEY (hub_id, group_key, partition)
);
