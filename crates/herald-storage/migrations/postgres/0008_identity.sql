-- Identity: principals (applications) with hashed client secrets, and each
-- vault's access policies. Client secrets are high-entropy random strings, so
-- a SHA-256 digest is a sound at-rest hash; the plain value is shown once.
CREATE TABLE principals (
    app_id       TEXT PRIMARY KEY,
    object_id    TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    builtin      BOOLEAN NOT NULL DEFAULT FALSE,
    created      BIGINT NOT NULL
);

CREATE TABLE principal_secrets (
    app_id       TEXT NOT NULL REFERENCES principals(app_id) ON DELETE CASCADE,
    key_id       TEXT NOT NULL,
    display_name TEXT NOT NULL,
    hint         TEXT NOT NULL,
    hash         TEXT NOT NULL,
    created      BIGINT NOT NULL,
    expires      BIGINT NOT NULL,
    PRIMARY KEY (app_id, key_id)
);

-- One row per vault and principal, as Key Vault keeps them (by object id).
CREATE TABLE vault_access_policies (
    vault_id  TEXT NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    object_id TEXT NOT NULL,
    app_id    TEXT NOT NULL,
    secrets   TEXT NOT NULL,
    updated   BIGINT NOT NULL,
    PRIMARY KEY (vault_id, object_id)
);
