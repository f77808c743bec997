-- Secrets every controller of a fleet needs (the CA's certificate and key), sealed
-- with the controllers' secrets key (AES-256-GCM): the database never holds them in
-- clear, and a controller on a new host gets them from it.
CREATE TABLE fleet_secrets (
    name       TEXT COLLATE "C" PRIMARY KEY,
    nonce      BYTEA NOT NULL,
    sealed     BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
