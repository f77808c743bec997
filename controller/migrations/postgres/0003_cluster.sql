-- Several controllers on one database. Each live controller has a row it refreshes
-- every second; the one holding the lease runs the rollout engine (the epoch grows
-- with every change of holder and fences the engine's writes); every agent session
-- is a row naming the controller that holds it; rollout calls taken by a controller
-- that does not lead wait here for the leader's answer.
CREATE TABLE controllers (
    id           TEXT COLLATE "C" PRIMARY KEY,
    url          TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE controller_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    holder_url TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO controller_lease (id, holder, holder_url, epoch, expires_at) VALUES (1, '', '', 0, 'epoch');

CREATE TABLE agent_sessions (
    machine_id    TEXT COLLATE "C" PRIMARY KEY,
    controller_id TEXT COLLATE "C" NOT NULL,
    connected_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX agent_sessions_by_controller ON agent_sessions (controller_id);

CREATE TABLE forwarded_calls (
    id            BIGSERIAL PRIMARY KEY,
    kind          TEXT NOT NULL,
    body          BYTEA NOT NULL,
    caller_id     TEXT NOT NULL,
    caller_name   TEXT NOT NULL,
    caller_role   TEXT NOT NULL,
    posted_by     TEXT NOT NULL,
    posted_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_epoch BIGINT,
    answered_at   TIMESTAMPTZ,
    code          INTEGER,
    message       TEXT,
    answer        BYTEA
);
CREATE INDEX forwarded_calls_open ON forwarded_calls (id) WHERE answered_at IS NULL;
