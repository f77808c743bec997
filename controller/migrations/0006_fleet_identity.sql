-- The fleet this database holds: one row, written when the fleet is created (or,
-- for a database from before fleet ids, when a controller first opens it). The
-- controller's data dir keeps the same id in `fleet-id`; the two must agree.
CREATE TABLE fleet (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    fleet_id   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Retention prunes by age.
CREATE INDEX rollout_events_by_time ON rollout_events (at);
CREATE INDEX audit_events_by_time ON audit_events (at);
CREATE INDEX machine_reports_by_time ON machine_reports (updated_at);
