"""The reconciler's share of "prediction logging loses nothing" on Cloud Run: journal files a model
server kept in Cloud Storage when it stopped are replayed here too, so rows do not wait for the next
instance of that deployment to start (it may never start again). Model servers replay them as well;
the predictions table's unique key makes every replay exactly-once."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from modelrun.db.predictions import insert_ignoring_duplicates

log = logging.getLogger(__name__)

CHUNK_ROWS = 500


class Journals:
    def __init__(self, engine: sa.Engine, uri: str | None):
        self.engine, self.uri = engine, uri

    def replay(self) -> int:
        """Replay every kept journal (of deleted deployments too: their rows are predictions that were made);
        the rows read, 0 when no journal_uri is set."""
        if not self.uri:
            return 0
        from serving.remote_journal import RemoteJournal  # the journal's format lives with the model server

        total = 0
        for name in RemoteJournal.deployments(self.uri):
            objects, rows = RemoteJournal(self.uri, name).replay(self._insert, CHUNK_ROWS)
            if objects:
                log.info("%s: replayed %d prediction rows from %d journal file(s) kept in Cloud Storage",
                         name, rows, objects)
            total += rows
        return total

    def _insert(self, rows: list[dict]) -> int:
        with self.engine.begin() as conn:
            return insert_ignoring_duplicates(conn, rows)
