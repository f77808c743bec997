-- Environments: every revision of every environment's spec, with each git ref pinned
-- to a commit. A revision is immutable; applying the same pinned spec again finds it.
-- Times are Unix milliseconds (UTC).

CREATE TABLE environment_revisions (
    environment TEXT NOT NULL,
    number      INTEGER NOT NULL,  -- 1, 2, 3 … per environment, in creation order
    id          TEXT NOT NULL,     -- sha256 of the canonical pinned spec (64 hex digits)
    spec_json   TEXT NOT NULL,     -- the canonical pinned spec
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (environment, number),
    UNIQUE (environment, id)
);
