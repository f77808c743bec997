-- Provisioning: what the controller wants each machine to run, and where the machine's
-- agent last said it stands. One row per machine in each; times are Unix milliseconds.

-- The generation rises by one at every assignment (a rollout, a retry, a rollback), so
-- an agent can tell a new intent from one it has already acted on.
CREATE TABLE machine_assignments (
    machine_id      TEXT PRIMARY KEY REFERENCES machines (id),
    generation      INTEGER NOT NULL,
    environment     TEXT NOT NULL,
    revision_number INTEGER NOT NULL,
    revision_id     TEXT NOT NULL,     -- sha256 of the revision's canonical pinned spec
    plan_json       TEXT NOT NULL,     -- the MachinePlan resolved for this machine
    torch           TEXT NOT NULL,     -- the planned torch build, e.g. 2.8.0+cu128
    activate        INTEGER NOT NULL,  -- 0: build and verify only; 1: also switch to it
    reason          TEXT NOT NULL,     -- rollout | rollback
    assigned_at     INTEGER NOT NULL,
    assigned_by     TEXT NOT NULL,
    FOREIGN KEY (environment, revision_number) REFERENCES environment_revisions (environment, number)
);

-- The latest ConvergenceReport each agent sent (serde JSON); the latest wins.
CREATE TABLE machine_reports (
    machine_id  TEXT PRIMARY KEY REFERENCES machines (id),
    report_json TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
