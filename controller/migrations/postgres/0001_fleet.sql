-- The PostgreSQL schema: the tables of SQLite migrations 0001–0006 in PostgreSQL's
-- types. Times are Unix milliseconds (BIGINT); ids that are matched by prefix or
-- paged in order are COLLATE "C", so their order is byte order on every server, as
-- in SQLite. JSON is kept as TEXT, exactly as the controller wrote it.

CREATE TABLE join_tokens (
    id            TEXT COLLATE "C" PRIMARY KEY,
    secret_sha256 BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    uses_allowed  BIGINT,            -- NULL: unlimited until expiry
    uses          BIGINT NOT NULL DEFAULT 0,
    labels        TEXT NOT NULL,     -- JSON object
    description   TEXT NOT NULL,
    created_by    TEXT NOT NULL
);

CREATE TABLE machines (
    id                   TEXT COLLATE "C" PRIMARY KEY,
    hostname             TEXT NOT NULL,
    enrolled_at          BIGINT NOT NULL,
    revoked_at           BIGINT,
    cert_sha256          TEXT NOT NULL,
    join_token_id        TEXT NOT NULL,
    token_labels         TEXT NOT NULL,  -- JSON object
    agent_labels         TEXT NOT NULL,  -- JSON object
    operator_labels      TEXT NOT NULL,  -- JSON object
    inventory            TEXT,           -- JSON, NULL until the first report
    inventory_updated_at BIGINT,
    agent_version        TEXT NOT NULL DEFAULT '',
    last_seen            BIGINT,
    remote_address       TEXT NOT NULL DEFAULT ''
);

CREATE TABLE credentials (
    id            TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    secret_sha256 BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    created_by    TEXT NOT NULL
);

CREATE TABLE audit_events (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_events_by_time ON audit_events (at);

CREATE TABLE environment_revisions (
    environment TEXT COLLATE "C" NOT NULL,
    number      BIGINT NOT NULL,           -- 1, 2, 3 … per environment, in creation order
    id          TEXT COLLATE "C" NOT NULL, -- sha256 of the canonical pinned spec (64 hex digits)
    spec_json   TEXT NOT NULL,             -- the canonical pinned spec
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (environment, number),
    UNIQUE (environment, id)
);

CREATE TABLE machine_assignments (
    machine_id      TEXT COLLATE "C" PRIMARY KEY REFERENCES machines (id),
    generation      BIGINT NOT NULL,
    environment     TEXT COLLATE "C" NOT NULL,
    revision_number BIGINT NOT NULL,
    revision_id     TEXT COLLATE "C" NOT NULL,
    plan_json       TEXT NOT NULL,
    torch           TEXT NOT NULL,
    activate        BOOLEAN NOT NULL,  -- false: build and verify only; true: also switch to it
    reason          TEXT NOT NULL,     -- rollout | rollback
    assigned_at     BIGINT NOT NULL,
    assigned_by     TEXT NOT NULL,
    FOREIGN KEY (environment, revision_number) REFERENCES environment_revisions (environment, number)
);
CREATE INDEX machine_assignments_by_revision ON machine_assignments (revision_id);

CREATE TABLE machine_reports (
    machine_id  TEXT COLLATE "C" PRIMARY KEY REFERENCES machines (id),
    report_json TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX machine_reports_by_time ON machine_reports (updated_at);

CREATE TABLE rollouts (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    environment     TEXT COLLATE "C" NOT NULL,
    revision_number BIGINT NOT NULL,
    revision_id     TEXT COLLATE "C" NOT NULL,
    kind            TEXT NOT NULL,              -- rollout | undo
    policy_json     TEXT NOT NULL,              -- the effective RolloutPolicy
    state           TEXT NOT NULL,              -- running | paused | succeeded | aborted
    reason          TEXT NOT NULL DEFAULT '',
    budget_exceeded BOOLEAN NOT NULL DEFAULT FALSE,
    named_machines  BOOLEAN NOT NULL,
    batch_size      BIGINT NOT NULL,
    undo_of         BIGINT,
    stalled         BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT NOT NULL,
    created_by      TEXT NOT NULL,
    finished_at     BIGINT,
    FOREIGN KEY (environment, revision_number) REFERENCES environment_revisions (environment, number)
);
CREATE INDEX rollouts_by_environment ON rollouts (environment, id);
CREATE INDEX rollouts_unfinished ON rollouts (state) WHERE state IN ('running', 'paused');

CREATE TABLE rollout_machines (
    rollout_id           BIGINT NOT NULL REFERENCES rollouts (id),
    machine_id           TEXT COLLATE "C" NOT NULL REFERENCES machines (id),
    ordinal              BIGINT NOT NULL,
    phase                BIGINT NOT NULL,
    status               TEXT NOT NULL,
    generation           BIGINT NOT NULL,
    plan_json            TEXT NOT NULL,
    torch                TEXT NOT NULL,
    from_environment     TEXT,
    from_revision_number BIGINT,
    detail               TEXT NOT NULL DEFAULT '',
    since                BIGINT NOT NULL,
    activations          BIGINT NOT NULL DEFAULT 0,
    attempts             BIGINT NOT NULL DEFAULT 1,
    rollback_tried       BOOLEAN NOT NULL DEFAULT FALSE,
    stalled              BOOLEAN NOT NULL DEFAULT FALSE,
    joined               BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (rollout_id, machine_id)
);

CREATE TABLE rollout_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id  BIGINT NOT NULL REFERENCES rollouts (id),
    at          BIGINT NOT NULL,
    machine_id  TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL,
    from_status TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT '',
    phase       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout_id, id);
CREATE INDEX rollout_events_by_time ON rollout_events (at);

CREATE TABLE locks (
    digest    TEXT COLLATE "C" PRIMARY KEY,
    class     TEXT NOT NULL,
    lock_json TEXT NOT NULL
);

CREATE TABLE package_files (
    sha256    TEXT COLLATE "C" PRIMARY KEY,
    url       TEXT NOT NULL,
    file_name TEXT NOT NULL,
    size      BIGINT
);

CREATE TABLE fleet (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    fleet_id   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
