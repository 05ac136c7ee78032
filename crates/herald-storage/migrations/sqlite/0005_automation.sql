-- Automation: runbooks, their webhooks, jobs with streams, and assets.

CREATE TABLE runbooks (
    id                TEXT PRIMARY KEY,
    key               TEXT NOT NULL UNIQUE,       -- lower-cased name
    name              TEXT NOT NULL,
    kind              TEXT NOT NULL,              -- bash | sh | python3 | pwsh | node
    description       TEXT NOT NULL DEFAULT '',
    draft             TEXT NOT NULL,              -- draft content
    draft_params      TEXT NOT NULL,              -- JSON array of declared parameters
    settings          TEXT NOT NULL,              -- JSON: timeout, concurrency, network, permissions
    published_version INTEGER,                    -- NULL until first publish
    created           INTEGER NOT NULL,
    updated           INTEGER NOT NULL
);

-- Publishing freezes the draft; jobs pin the version they ran.
CREATE TABLE runbook_versions (
    runbook_id TEXT NOT NULL REFERENCES runbooks(id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    content    TEXT NOT NULL,
    params     TEXT NOT NULL,
    published  INTEGER NOT NULL,
    PRIMARY KEY (runbook_id, version)
);

CREATE TABLE webhooks (
    id                TEXT PRIMARY KEY,
    key               TEXT NOT NULL UNIQUE,
    name              TEXT NOT NULL,
    runbook_id        TEXT NOT NULL REFERENCES runbooks(id) ON DELETE CASCADE,
    token_hash        TEXT NOT NULL UNIQUE,       -- SHA-256 of the URL token; the token itself is never stored
    is_enabled        INTEGER NOT NULL,
    expiry            INTEGER NOT NULL,
    parameters        TEXT NOT NULL,              -- JSON object of plain parameter values
    secure_parameters BLOB,                       -- sealed JSON object of `secure` parameter values
    run_on            TEXT NOT NULL DEFAULT '',
    description       TEXT NOT NULL DEFAULT '',
    last_invoked      INTEGER,
    created           INTEGER NOT NULL,
    updated           INTEGER NOT NULL
);

-- Tokens minted by generateUri, waiting for the PUT that binds them.
CREATE TABLE webhook_pending_tokens (
    token_hash TEXT PRIMARY KEY,
    created    INTEGER NOT NULL
);

CREATE TABLE jobs (
    id                   TEXT PRIMARY KEY,        -- uuid v7, so ids sort by creation
    runbook_id           TEXT NOT NULL,
    runbook_name         TEXT NOT NULL,
    runbook_version      INTEGER NOT NULL,
    started_by           TEXT NOT NULL,
    run_on               TEXT NOT NULL DEFAULT '',
    status               TEXT NOT NULL,
    status_details       TEXT NOT NULL DEFAULT '',
    exception            TEXT,
    parameters           TEXT NOT NULL,           -- JSON shown on the job, secure values masked
    input                BLOB NOT NULL,           -- sealed job input (parameters + WebhookData)
    created              INTEGER NOT NULL,
    start_time           INTEGER,
    end_time             INTEGER,
    last_modified        INTEGER NOT NULL,
    last_status_modified INTEGER NOT NULL,
    worker               TEXT,
    lease_until          INTEGER,
    restarts             INTEGER NOT NULL DEFAULT 0,
    sandbox              TEXT,
    exit_code            INTEGER,
    stream_seq           INTEGER NOT NULL DEFAULT 0,
    stream_bytes         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_queue ON jobs (status, run_on, created);
CREATE INDEX jobs_runbook ON jobs (runbook_id, status);
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE lease_until IS NOT NULL;

CREATE TABLE job_transitions (
    job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    status  TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '',
    at      INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_streams (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    stream TEXT NOT NULL,
    time   INTEGER NOT NULL,
    text   TEXT NOT NULL,
    value  TEXT,
    PRIMARY KEY (job_id, seq)
);

-- Idempotency-Key → the job it started, for 24 h.
CREATE TABLE job_idempotency (
    webhook_id TEXT NOT NULL,
    key        TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    created    INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, key)
);

-- Short-lived tokens a running job uses to reach the vault and assets.
CREATE TABLE job_tokens (
    token_hash TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX job_tokens_job ON job_tokens (job_id);

CREATE TABLE assets (
    key         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,                    -- variable | credential
    encrypted   INTEGER NOT NULL,
    username    TEXT,
    value       BLOB NOT NULL,                    -- sealed when encrypted (always for credentials)
    description TEXT NOT NULL DEFAULT '',
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL
);

-- Remote workers seen recently, for status pages.
CREATE TABLE workers (
    id        TEXT PRIMARY KEY,
    grp       TEXT NOT NULL,
    hostname  TEXT NOT NULL,
    slots     INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
