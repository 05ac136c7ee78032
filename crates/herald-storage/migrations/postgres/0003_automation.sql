-- Automation: runbooks, their webhooks, jobs with streams, and assets.
-- Ported from migrations/sqlite/0005_automation.sql. Times are epoch
-- milliseconds (BIGINT). Columns that lists sort or page by are
-- COLLATE "C", so the order is bytewise as on SQLite whatever the
-- database's default collation.

CREATE TABLE runbooks (
    id                TEXT COLLATE "C" PRIMARY KEY,
    key               TEXT COLLATE "C" NOT NULL UNIQUE,   -- lower-cased name
    name              TEXT NOT NULL,
    kind              TEXT NOT NULL,                      -- bash | sh | python3 | pwsh | node
    description       TEXT NOT NULL DEFAULT '',
    draft             TEXT NOT NULL,                      -- draft content
    draft_params      TEXT NOT NULL,                      -- JSON array of declared parameters
    settings          TEXT NOT NULL,                      -- JSON: timeout, concurrency, network, permissions
    published_version BIGINT,                             -- NULL until first publish
    created           BIGINT NOT NULL,
    updated           BIGINT NOT NULL
);

-- Publishing freezes the draft; jobs pin the version they ran.
CREATE TABLE runbook_versions (
    runbook_id TEXT COLLATE "C" NOT NULL REFERENCES runbooks(id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    content    TEXT NOT NULL,
    params     TEXT NOT NULL,
    published  BIGINT NOT NULL,
    PRIMARY KEY (runbook_id, version)
);

CREATE TABLE webhooks (
    id                TEXT COLLATE "C" PRIMARY KEY,
    key               TEXT COLLATE "C" NOT NULL UNIQUE,
    name              TEXT NOT NULL,
    runbook_id        TEXT COLLATE "C" NOT NULL REFERENCES runbooks(id) ON DELETE CASCADE,
    token_hash        TEXT NOT NULL UNIQUE,               -- SHA-256 of the URL token; the token itself is never stored
    is_enabled        BOOLEAN NOT NULL,
    expiry            BIGINT NOT NULL,
    parameters        TEXT NOT NULL,                      -- JSON object of plain parameter values
    secure_parameters BYTEA,                              -- sealed JSON object of `secure` parameter values
    run_on            TEXT NOT NULL DEFAULT '',
    description       TEXT NOT NULL DEFAULT '',
    last_invoked      BIGINT,
    created           BIGINT NOT NULL,
    updated           BIGINT NOT NULL
);
CREATE INDEX webhooks_runbook ON webhooks (runbook_id, key);

-- Tokens minted by generateUri, waiting for the PUT that binds them.
CREATE TABLE webhook_pending_tokens (
    token_hash TEXT PRIMARY KEY,
    created    BIGINT NOT NULL
);
CREATE INDEX webhook_pending_tokens_created ON webhook_pending_tokens (created);

CREATE TABLE jobs (
    id                   TEXT COLLATE "C" PRIMARY KEY,    -- uuid v7, so ids sort by creation
    runbook_id           TEXT COLLATE "C" NOT NULL,
    runbook_name         TEXT NOT NULL,
    runbook_version      BIGINT NOT NULL,
    started_by           TEXT NOT NULL,
    run_on               TEXT COLLATE "C" NOT NULL DEFAULT '',
    status               TEXT COLLATE "C" NOT NULL,
    status_details       TEXT NOT NULL DEFAULT '',
    exception            TEXT,
    parameters           TEXT NOT NULL,                   -- JSON shown on the job, secure values masked
    input                BYTEA NOT NULL,                  -- sealed job input (parameters + WebhookData)
    created              BIGINT NOT NULL,
    start_time           BIGINT,
    end_time             BIGINT,
    last_modified        BIGINT NOT NULL,
    last_status_modified BIGINT NOT NULL,
    worker               TEXT,
    lease_until          BIGINT,
    restarts             BIGINT NOT NULL DEFAULT 0,
    sandbox              TEXT,
    exit_code            BIGINT,
    stream_seq           BIGINT NOT NULL DEFAULT 0,
    stream_bytes         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_queue ON jobs (status, run_on, created, id);
CREATE INDEX jobs_runbook ON jobs (runbook_id, status);
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX jobs_ended ON jobs (end_time) WHERE end_time IS NOT NULL;

CREATE TABLE job_transitions (
    job_id  TEXT COLLATE "C" NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    status  TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '',
    at      BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_streams (
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    stream TEXT NOT NULL,
    time   BIGINT NOT NULL,
    text   TEXT NOT NULL,
    value  TEXT,
    PRIMARY KEY (job_id, seq)
);

-- Idempotency-Key → the job it started, for 24 h. The primary key is what
-- makes two racing calls with one key agree on a single job.
CREATE TABLE job_idempotency (
    webhook_id TEXT NOT NULL,
    key        TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    created    BIGINT NOT NULL,
    PRIMARY KEY (webhook_id, key)
);
CREATE INDEX job_idempotency_created ON job_idempotency (created);

-- Short-lived tokens a running job uses to reach the vault and assets.
CREATE TABLE job_tokens (
    token_hash TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX job_tokens_job ON job_tokens (job_id);
CREATE INDEX job_tokens_expires ON job_tokens (expires_at);

CREATE TABLE assets (
    key         TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,                            -- variable | credential
    encrypted   BOOLEAN NOT NULL,
    username    TEXT,
    value       BYTEA NOT NULL,                           -- sealed when encrypted (always for credentials)
    description TEXT NOT NULL DEFAULT '',
    created     BIGINT NOT NULL,
    updated     BIGINT NOT NULL
);

-- Remote workers seen recently, for status pages.
CREATE TABLE workers (
    id        TEXT COLLATE "C" PRIMARY KEY,
    grp       TEXT COLLATE "C" NOT NULL,
    hostname  TEXT NOT NULL,
    slots     BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
