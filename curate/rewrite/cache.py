"""A persistent cache of LLM generations, so a rerun or a crash repeats no generation.

A request is keyed by sha256 of (model identity, prompt, sampling parameters, seed); the value
is the raw completion. Only completions are cached, never transport errors, so a request that
failed (server down, timeout) is asked again next time. The cache is one SQLite file (WAL mode)
written only by the run's driver, after every batch; it may be shared by several runs
(``rewrite.cache``) and copied between machines.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from curate.rewrite.backends import Prompt


def request_key(model: str, prompt: Prompt, sampling: str, seed: int) -> str:
    blob = json.dumps([model, prompt, sampling, seed], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class GenerationCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = sqlite3.connect(str(self.path), timeout=60)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=NORMAL")
        self.con.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, "
                         "text TEXT NOT NULL, model TEXT, backend TEXT, created REAL)")
        self.con.commit()

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
