-- Rollouts: a revision moved across the machines its spec targets, in phases. The
-- engine keeps every decision here, in the same transaction as the assignment it
-- makes, so a controller restarted at any moment continues the same rollout. Times
-- are Unix milliseconds.

CREATE TABLE rollouts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    environment     TEXT NOT NULL,
    revision_number INTEGER NOT NULL,
    revision_id     TEXT NOT NULL,
    kind            TEXT NOT NULL,            -- rollout | undo
    policy_json     TEXT NOT NULL,            -- the effective RolloutPolicy
    state           TEXT NOT NULL,            -- running | paused | succeeded | aborted
    reason          TEXT NOT NULL DEFAULT '', -- why paused or aborted
    budget_exceeded INTEGER NOT NULL DEFAULT 0,
    named_machines  INTEGER NOT NULL,         -- 1: only the machines named; no joiners
    batch_size      INTEGER NOT NULL,         -- machines per phase after the canary
    undo_of         INTEGER,                  -- the revision an undo leaves
    stalled         INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    finished_at     INTEGER,
    FOREIGN KEY (environment, revision_number) REFERENCES environment_revisions (environment, number)
);

CREATE INDEX rollouts_by_environment ON rollouts (environment, id);
CREATE INDEX rollouts_unfinished ON rollouts (state) WHERE state IN ('running', 'paused');

-- One row per machine in a rollout.
CREATE TABLE rollout_machines (
    rollout_id    INTEGER NOT NULL REFERENCES rollouts (id),
    machine_id    TEXT NOT NULL REFERENCES machines (id),
    ordinal       INTEGER NOT NULL,       -- the order machines go in; canaries first
    phase         INTEGER NOT NULL,       -- 0 canary, 1 … batches
    status        TEXT NOT NULL,          -- pending | preparing | prepared | activating | active | failed | rolling_back | rolled_back | skipped
    generation    INTEGER NOT NULL,       -- the machine's assignment generation this rollout made last (0: none)
    plan_json     TEXT NOT NULL,          -- the MachinePlan for the rollout's revision
    torch         TEXT NOT NULL,
    from_environment     TEXT,            -- what it ran when it joined (NULL: nothing)
    from_revision_number INTEGER,
    detail        TEXT NOT NULL DEFAULT '',
    since         INTEGER NOT NULL,       -- when the status last changed
    activations   INTEGER NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 1,
    rollback_tried INTEGER NOT NULL DEFAULT 0,
    stalled       INTEGER NOT NULL DEFAULT 0,
    joined        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout_id, machine_id)
);

-- Append-only: every transition of a rollout and of each of its machines.
CREATE TABLE rollout_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id INTEGER NOT NULL REFERENCES rollouts (id),
    at         INTEGER NOT NULL,
    machine_id TEXT NOT NULL DEFAULT '',  -- '' for the rollout itself
    kind       TEXT NOT NULL,
    from_status TEXT NOT NULL DEFAULT '',
    detail     TEXT NOT NULL DEFAULT '',
    phase      INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout_id, id);
