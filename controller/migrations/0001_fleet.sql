-- The fleet link: machines, join tokens, operator credentials, audit log.
-- Times are Unix milliseconds (UTC). Secrets are stored only as sha256 digests.

CREATE TABLE join_tokens (
    id            TEXT PRIMARY KEY,
    secret_sha256 BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    uses_allowed  INTEGER,            -- NULL: unlimited until expiry
    uses          INTEGER NOT NULL DEFAULT 0,
    labels        TEXT NOT NULL,      -- JSON object
    description   TEXT NOT NULL,
    created_by    TEXT NOT NULL
);

CREATE TABLE machines (
    id                   TEXT PRIMARY KEY,
    hostname             TEXT NOT NULL,
    enrolled_at          INTEGER NOT NULL,
    revoked_at           INTEGER,
    cert_sha256          TEXT NOT NULL,
    join_token_id        TEXT NOT NULL,
    token_labels         TEXT NOT NULL,  -- JSON object
    agent_labels         TEXT NOT NULL,  -- JSON object
    operator_labels      TEXT NOT NULL,  -- JSON object
    inventory            TEXT,           -- JSON, NULL until the first report
    inventory_updated_at INTEGER,
    agent_version        TEXT NOT NULL DEFAULT '',
    last_seen            INTEGER,
    remote_address       TEXT NOT NULL DEFAULT ''
);

CREATE TABLE credentials (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    created_by    TEXT NOT NULL
);

CREATE TABLE audit_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
