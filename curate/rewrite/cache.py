"""A persistent cache of LLM generations, so a rerun or a crash repeats no generation.

A request is keyed by sha256 of (model identity, prompt, sampling parameters, seed); the value
is the raw completion. Only completions are cached, never transport errors, so a request that
failed (server down, timeout) is asked again next time. The cache is one SQLite file (WAL mode)
written only by the run's driver, after every batch; it may be shared by several runs
(``rewrite.cache``) and copied between machines. A cache file that is not a database (damaged)
is kept aside as ``<name>.damaged`` with a warning, and a new one started.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

from curate.rewrite.backends import Prompt

log = logging.getLogger("curate")


def request_key(model: str, prompt: Prompt, sampling: str, seed: int) -> str:
    blob = json.dumps([model, prompt, sampling, seed], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class GenerationCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = self._open()
        except sqlite3.DatabaseError as exc:  # not a database (overwritten, truncated)
            # A cache only saves work: the damaged file is kept aside, generations are made
            # again into a new one.
            aside = self.path.with_name(self.path.name + ".damaged")
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            log.warning("the generation cache %s is damaged (%s): kept as %s; what it held "
                        "is generated again", self.path, exc, aside.name)
            self.con = self._open()

    def _open(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=60)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, "
                        "text TEXT NOT NULL, model TEXT, backend TEXT, created REAL)")
            con.execute("SELECT count(*) FROM generations").fetchone()
            con.commit()
        except sqlite3.DatabaseError:
            con.close()
            raise
        return con

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self.con.execute(
                f"SELECT key, text FROM generations WHERE key IN ({marks})", chunk).fetchall())
        return found

    def put_many(self, items: list[tuple[str, str]], model: str, backend: str) -> None:
        now = time.time()
        with self.con:
            self.con.executemany(
                "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?)",
                [(k, t, model, backend, now) for k, t in items])

    def __len__(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        self.con.close()
