-- Ported from migrations/sqlite/0011_blob.sql; BIGINT and BYTEA for INTEGER and BLOB.
-- Blob storage: accounts with two sealed keys, containers, block blobs and
-- uncommitted blocks. Only metadata lives here; content is in the object
-- store under generated keys (`parts`, `object_key`), never under a blob's
-- name, so a name cannot reach outside the store. Times are unix ms.
CREATE TABLE storage_accounts (
    name    TEXT PRIMARY KEY,
    key1    BYTEA NOT NULL,
    key2    BYTEA NOT NULL,
    created BIGINT NOT NULL
);

-- Names sort bytewise ("C"), as SQLite's BINARY does, so listings and their
-- markers page the same way on both engines whatever the server's locale.
CREATE TABLE blob_containers (
    account       TEXT NOT NULL REFERENCES storage_accounts(name) ON DELETE CASCADE,
    name          TEXT COLLATE "C" NOT NULL,
    metadata      TEXT NOT NULL,
    etag          TEXT NOT NULL,
    last_modified BIGINT NOT NULL,
    PRIMARY KEY (account, name)
);

-- `parts` is the committed block list as JSON: [{"id": .., "key": .., "size": ..}].
CREATE TABLE blobs (
    account             TEXT NOT NULL,
    container           TEXT NOT NULL,
    name                TEXT COLLATE "C" NOT NULL,
    etag                TEXT NOT NULL,
    created             BIGINT NOT NULL,
    last_modified       BIGINT NOT NULL,
    size                BIGINT NOT NULL,
    content_type        TEXT NOT NULL,
    content_encoding    TEXT,
    content_language    TEXT,
    content_md5         TEXT,
    cache_control       TEXT,
    content_disposition TEXT,
    metadata            TEXT NOT NULL,
    parts               TEXT NOT NULL,
    PRIMARY KEY (account, container, name),
    FOREIGN KEY (account, container) REFERENCES blob_containers(account, name) ON DELETE CASCADE
);

CREATE TABLE blob_blocks (
    account    TEXT NOT NULL,
    container  TEXT NOT NULL,
    blob       TEXT NOT NULL,
    block_id   TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size       BIGINT NOT NULL,
    created    BIGINT NOT NULL,
    PRIMARY KEY (account, container, blob, block_id),
    FOREIGN KEY (account, container) REFERENCES blob_containers(account, name) ON DELETE CASCADE
);
