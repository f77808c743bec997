"""init (comfyfleet stand-in migration)"""
revision = "e9c714da8d57"
down_revision = None


def upgrade(connection):
    connection.execute("CREATE TABLE IF NOT EXISTS model (id INTEGER PRIMARY KEY, path TEXT NOT NULL)")
