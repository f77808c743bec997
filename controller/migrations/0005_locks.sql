-- Locks: for one build class of a revision, every package at one version as one file
-- with its URL and sha256. Kept by digest (the spec's `lock.digests` names them), so
-- revisions that lock the same class alike share one row.
CREATE TABLE locks (
    digest    TEXT PRIMARY KEY,  -- sha256 of the canonical lock (64 hex digits)
    class     TEXT NOT NULL,     -- cp312-cu128-linux_x86_64
    lock_json TEXT NOT NULL
);

-- Every file a stored revision may install (lock entries and kernel wheels), by
-- sha256: where the controller's package cache fetches it from upstream.
CREATE TABLE package_files (
    sha256    TEXT PRIMARY KEY,
    url       TEXT NOT NULL,
    file_name TEXT NOT NULL,
    size      INTEGER            -- bytes, when the index said
);
