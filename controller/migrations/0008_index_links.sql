-- Which index linked which file (by sha256) on a project page the package cache
-- proxied: a machine is served such a file only when its own assignment names the
-- index (the key is the first 16 hex digits of the sha256 of the index URL).
CREATE TABLE index_links (
    index_key TEXT NOT NULL,
    sha256    TEXT NOT NULL,
    PRIMARY KEY (sha256, index_key)
);
