"""Reading a command's MLflow store the way a second process would (the tests' own eyes on it)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def query(db: Path, sql: str, *args) -> list:
    """Rows of `sql` on the sqlite store, read-only, while its writer may hold the lock."""
    for _ in range(50):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:   # not created yet, or locked for a moment
            time.sleep(0.1)
    raise AssertionError(f"cannot read {db}")


def run_rows(db: Path) -> list[tuple[str, str, str | None]]:
    """(run id, status, error tag) of every run, oldest first."""
    return query(db, "select r.run_uuid, r.status, t.value from runs r left join tags t "
                     "on t.run_uuid = r.run_uuid and t.key = 'error' order by r.start_time")
