"""Leases in SQL: at most one control-plane process acts on a deployment at a time.

On Google Cloud several instances of the functions may reconcile at once (an API write, a build event and
the scheduler); locally `modelrun up` is one process, and the lease costs two short statements per
deployment and pass. A lease expires after `ttl` seconds, so a process that died holding one delays that
deployment by at most that long. Holders compare their own clocks to the stored expiry: instances' clocks
are NTP-synchronized far closer than any sensible ttl.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import sqlalchemy as sa

from modelrun.control.repository import utcnow
from modelrun.control.schema import leases
from modelrun.db import write_transaction
from modelrun.errors import Unavailable


class Leases:
    def __init__(self, engine: sa.Engine, holder: str, ttl: float):
        self.engine = engine
        self.holder = holder[:64]
        self.ttl = timedelta(seconds=ttl)

    def acquire(self, name: str) -> bool:
        """Take or renew the lease on `name`; False when another live holder has it."""
        now = utcnow()
        free = (leases.c.holder == self.holder) | (leases.c.expires_at < now)
        with _database():
            with write_transaction(self.engine) as conn:
                taken = conn.execute(leases.update().where((leases.c.name == name) & free)
                                     .values(holder=self.holder, expires_at=now + self.ttl)).rowcount
            if taken:
                return True
            try:  # nobody ever held it: the primary key lets exactly one inserter win
                with write_transaction(self.engine) as conn:
                    conn.execute(leases.insert().values(name=name, holder=self.holder, expires_at=now + self.ttl))
                return True
            except sa.exc.IntegrityError:
                return False

    def release(self, name: str) -> None:
        """Give the lease back (it would expire anyway: failures to release are ignored)."""
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(leases.delete().where((leases.c.name == name) & (leases.c.holder == self.holder)))
        except sa.exc.SQLAlchemyError:
            pass

    def held_by_others(self) -> set[str]:
        """Names whose lease another holder has now: what they may be starting must not be swept."""
        with _database(), self.engine.connect() as conn:
            return set(conn.execute(sa.select(leases.c.name).where(
                (leases.c.holder != self.holder) & (leases.c.expires_at >= utcnow()))).scalars())


@contextmanager
def _database():
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise Unavailable(f"the database is unavailable: {exc.orig}") from None
