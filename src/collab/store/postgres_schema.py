"""The PostgreSQL store's tables: each schema version as the statements that create it from the one before.

:meth:`collab.store.postgres.PostgresStore.open` runs the missing versions in
order, under an advisory lock, and records each in ``collab_schema``.
"""

from __future__ import annotations

#: The schema version this code writes; :meth:`PostgresStore.open` migrates older ones.
SCHEMA_VERSION = 8

#: Statements creating each version from the one before, in order.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS collab_docs (
            id TEXT PRIMARY KEY,
            rev BIGINT NOT NULL,
            size BIGINT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS collab_docs_updated ON collab_docs (updated DESC)",
        """CREATE TABLE IF NOT EXISTS collab_ops (
            doc TEXT NOT NULL,
            rev BIGINT NOT NULL,
            op TEXT NOT NULL,
            client TEXT NOT NULL,
            op_id TEXT NOT NULL,
            PRIMARY KEY (doc, rev)
        )""",
        # Op ids outlive the compacted log, so a resend from long ago is still recognized.
        """CREATE TABLE IF NOT EXISTS collab_op_ids (
            doc TEXT NOT NULL,
            op_id TEXT NOT NULL,
            rev BIGINT NOT NULL,
            PRIMARY KEY (doc, op_id)
        )""",
        """CREATE TABLE IF NOT EXISTS collab_snapshots (
            doc TEXT NOT NULL,
            rev BIGINT NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (doc, rev)
        )""",
    ],
    # PostgreSQL's text type refuses U+0000, a valid character in a document:
    # snapshots are kept as their UTF-8 bytes instead.
    2: ["ALTER TABLE collab_snapshots ALTER COLUMN text TYPE BYTEA USING convert_to(text, 'UTF8')"],
    # History: every op is kept (no longer deleted behind snapshots), with its author (a row of
    # collab_authors) and commit time; checkpoints of the text (UTF-8, compressed by TOAST) every
    # so often; editing sessions, the open one on the docs row. A snapshot of schema 2 becomes the
    # first checkpoint: the history before it was compacted away.
    3: [
        "ALTER TABLE collab_ops ADD COLUMN author INTEGER, ADD COLUMN at DOUBLE PRECISION",
        """CREATE TABLE collab_authors (
            id SERIAL PRIMARY KEY,
            name TEXT NOT NULL,
            client TEXT NOT NULL,
            UNIQUE (name, client)
        )""",
        """CREATE TABLE collab_checkpoints (
            doc TEXT NOT NULL,
            rev BIGINT NOT NULL,
            text BYTEA NOT NULL,
            runs BYTEA,
            PRIMARY KEY (doc, rev)
        )""",
        """CREATE TABLE collab_sessions (
            doc TEXT NOT NULL,
            first BIGINT NOT NULL,
            last BIGINT NOT NULL,
            start DOUBLE PRECISION NOT NULL,
            "end" DOUBLE PRECISION NOT NULL,
            authors INTEGER[] NOT NULL,
            inserted BIGINT NOT NULL,
            deleted BIGINT NOT NULL,
            thinned BOOLEAN NOT NULL DEFAULT false,
            PRIMARY KEY (doc, first)
        )""",
        "ALTER TABLE collab_docs ADD COLUMN s_first BIGINT, ADD COLUMN s_start DOUBLE PRECISION, "
        "ADD COLUMN s_end DOUBLE PRECISION, ADD COLUMN s_authors INTEGER[], ADD COLUMN s_ins BIGINT, "
        "ADD COLUMN s_del BIGINT",
        "INSERT INTO collab_checkpoints (doc, rev, text) SELECT doc, rev, text FROM collab_snapshots",
    ],
    # Recorded share links and revocations, the trash, titles, and renamed names.
    4: [
        "ALTER TABLE collab_docs ADD COLUMN IF NOT EXISTS deleted DOUBLE PRECISION",
        "ALTER TABLE collab_docs ADD COLUMN IF NOT EXISTS title TEXT",
        "ALTER TABLE collab_docs ADD COLUMN IF NOT EXISTS heading TEXT",
        "CREATE INDEX IF NOT EXISTS collab_docs_deleted ON collab_docs (deleted) WHERE deleted IS NOT NULL",
        "CREATE SEQUENCE IF NOT EXISTS collab_credentials_seq",
        """CREATE TABLE IF NOT EXISTS collab_credentials (
            id TEXT PRIMARY KEY,
            doc TEXT,
            role TEXT NOT NULL,
            issued DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION,
            name TEXT,
            revoked DOUBLE PRECISION,
            seq BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS collab_credentials_doc ON collab_credentials (doc)",
        "CREATE INDEX IF NOT EXISTS collab_credentials_seq ON collab_credentials (seq)",
        """CREATE TABLE IF NOT EXISTS collab_renames (
            old TEXT PRIMARY KEY,
            new TEXT NOT NULL,
            renamed DOUBLE PRECISION NOT NULL
        )""",
    ],
    # The length in bytes of UTF-8, for the list; NULL until the document's next append.
    5: ["ALTER TABLE collab_docs ADD COLUMN IF NOT EXISTS bytes BIGINT"],
    # Every checkpoint gets its authorship runs, computed after it is written (and, for the
    # checkpoints of older versions, by the same maintenance after the upgrade): those
    # still to compute are found with this index.
    6: ["CREATE INDEX IF NOT EXISTS collab_checkpoints_no_runs ON collab_checkpoints (rev) WHERE runs IS NULL"],
    # The deployment's key for sealing announcements of commits (see collab.seal): one row, made
    # by the first process that asks for it.
    7: ["CREATE TABLE IF NOT EXISTS collab_cluster (id INTEGER PRIMARY KEY CHECK (id = 1), key BYTEA NOT NULL)"],
    # A counter moved by every change to the trash and the renamed names, in the change's own
    # transaction: the other processes poll it, and read the trash and the names only when it moved.
    8: [
        "CREATE TABLE IF NOT EXISTS collab_lifecycle (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL)",
        "INSERT INTO collab_lifecycle (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    ],
}
