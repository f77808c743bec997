-- Secrets every controller of a fleet needs (the CA's certificate and key), sealed
-- with the controllers' secrets key (AES-256-GCM): the database never holds them in
-- clear, and a controller on a new host gets them from it.
CREATE TABLE fleet_secrets (
    name       TEXT PRIMARY KEY,
    nonce      BLOB NOT NULL,
    sealed     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
