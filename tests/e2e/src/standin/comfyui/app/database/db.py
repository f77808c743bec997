"""Stand-in app/database/db.py (comfyfleet tests): ComfyUI's database set-up with the
standard library in alembic's place. Like ComfyUI, it brings the database at
--database-url forward through the migrations in alembic_db/versions; a database
whose revision this ComfyUI does not know (one a newer ComfyUI migrated) cannot be
used, and init_db raises alembic's own error."""
import importlib.util
import logging
import os
import re
import sqlite3

from comfy.cli_args import args

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def migrations():
    """revision -> (down_revision, path) of every file in alembic_db/versions."""
    versions = os.path.join(ROOT, "alembic_db", "versions")
    found = {}
    for name in sorted(os.listdir(versions)) if os.path.isdir(versions) else []:
        if not name.endswith(".py"):
            continue
        path = os.path.join(versions, name)
        with open(path) as file:
            text = file.read()
        revision = re.search(r'^revision\s*=\s*"([^"]+)"', text, re.M).group(1)
        down = re.search(r'^down_revision\s*=\s*"([^"]+)"', text, re.M)
        found[revision] = (down.group(1) if down else None, path)
    return found


def get_db_path():
    url = args.database_url
    if url.startswith("sqlite:///"):
        return url.split("///")[1]
    raise ValueError(f"Unsupported database URL '{url}'.")


def init_db():
    path = get_db_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    current = row[0] if row else None
    known = migrations()
    downs = {down for down, _ in known.values()}
    heads = [revision for revision in known if revision not in downs]
    if not heads:
        logging.warning("No target revision found.")
        return
    target = heads[0]
    if current is not None and current not in known:
        raise RuntimeError(f"Can't locate revision identified by '{current}'")
    chain = []
    at = target
    while at is not None and at != current:
        chain.append(at)
        at = known[at][0]
    for revision in reversed(chain):
        spec = importlib.util.spec_from_file_location(f"migration_{revision}", known[revision][1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.upgrade(connection)
    if chain:
        connection.execute("DELETE FROM alembic_version")
        connection.execute("INSERT INTO alembic_version VALUES (?)", (target,))
        connection.commit()
        logging.info(f"Database upgraded from {current} to {target}")
    connection.close()
