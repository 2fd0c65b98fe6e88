"""Comparing two selections: which samples one keeps and the other drops, and why.

``diff_runs(a, b)`` joins the two manifests on uid and counts samples kept in both, kept only
in A (grouped by the reason B dropped them) and kept only in B (grouped by A's reason). It then
compares the two selections as they were run: the scorer versions they selected on
(``selection.json``: label, version, parameters) and their steps (``pipeline.yaml``), by the
drop reason each step produces, with the parameters that differ (e.g. a threshold that moved).
Reasons that explain the differing samples come first. Two selections of one store compare
the same scores; selections of different stores are compared too, and the diff says so.
``curate diff SEL_A SEL_B`` prints it; ``--out`` writes the per-sample table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import yaml

from curate.errors import CurateError
from curate.io.atomic import atomic_path
from curate.io.dataset import MANIFEST, manifest_path, scan_sql
from curate.sql import literal


@dataclass
class StepChange:
    what: str  # "scorer" or "select"
    name: str  # scorer name, or the drop reason of a selection step
    change: str  # "added", "removed" or "changed"
    a: dict[str, Any] | None
    b: dict[str, Any] | None

    def describe(self) -> str:
        if self.change == "changed" and self.a is not None and self.b is not None:
            keys = sorted(set(self.a) | set(self.b))
            parts = [f"{k}: {self.a.get(k)!r} → {self.b.get(k)!r}" for k in keys
                     if self.a.get(k) != self.b.get(k)]
            return f"{self.what} {self.name}: " + ", ".join(parts)
        if self.change == "added":
            return f"{self.what} {self.name}: only in B ({_short(self.b or {})})"
        return f"{self.what} {self.name}: only in A ({_short(self.a or {})})"


@dataclass
class RunDiff:
    a: Path
    b: Path
    samples_a: int
    samples_b: int
    kept_both: int
    only_a: int  # kept in A, not in B
    only_b: int
    only_a_by_reason: dict[str, int] = field(default_factory=dict)  # B's reasons
    only_b_by_reason: dict[str, int] = field(default_factory=dict)  # A's reasons
    missing_in_b: int = 0  # samples of A that B never saw
    missing_in_a: int = 0
    changes: list[StepChange] = field(default_factory=list)
    store_a: str | None = None
    store_b: str | None = None


def _short(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items() if v is not None)


def _steps(run: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(scorers by name, selection steps by drop reason) of the pipeline a run ran, with their
    parameters; presets are expanded into their rules."""
    from curate.saved import SAVED, saved_selection
    from curate.stages.base import Rule

    p = saved_selection(run / SAVED)
    record = json.loads((run / "selection.json").read_text()) if (
        run / "selection.json").is_file() else {}
    scorers = {s["label"]: {"version": s["version"], **s["params"]}
               for s in record.get("scorers", [])}
    steps: dict[str, dict[str, Any]] = {}
    for step in p.select:
        st = step.stage
        params = {"stage": st.name, **st.params.model_dump()}
        params.pop("reason", None)
        reasons = [st.reason] if isinstance(st, Rule) else list(st.reasons())  # type: ignore
        for r in reasons:
            steps[r] = params
    return scorers, steps


def _changes(a: Path, b: Path) -> list[StepChange]:
    try:
        sa, ra = _steps(a)
        sb, rb = _steps(b)
    except (CurateError, OSError, yaml.YAMLError) as exc:
        return [StepChange("pipeline", "(could not be compared)", "changed",
                           {"error": str(exc).splitlines()[0]}, None)]
    out: list[StepChange] = []
    for what, da, db in (("scorer", sa, sb), ("select", ra, rb)):
        for name in list(da) + [n for n in db if n not in da]:
            if name not in db:
                out.append(StepChange(what, name, "removed", da[name], None))
            elif name not in da:
                out.append(StepChange(what, name, "added", None, db[name]))
            elif da[name] != db[name]:
                out.append(StepChange(what, name, "changed", da[name], db[name]))
    return out


def diff_runs(a: str | Path, b: str | Path, out: str | Path | None = None) -> RunDiff:
    from curate.audit.catalog import resolve_selection

    ra = resolve_selection(a, MANIFEST)
    rb = resolve_selection(b, MANIFEST)
    ma, mb = scan_sql(manifest_path(ra)), scan_sql(manifest_path(rb))
    con = duckdb.connect()
    con.execute(f"""CREATE TEMP TABLE d AS
        SELECT coalesce(x.uid, y.uid) AS uid, x.kept AS kept_a, y.kept AS kept_b,
               x.reason AS reason_a, y.reason AS reason_b, coalesce(x.caption, y.caption)
               AS caption
        FROM (SELECT DISTINCT ON (uid) uid, kept, reason, caption FROM {ma}
              ORDER BY uid, kept DESC) x
        FULL OUTER JOIN (SELECT DISTINCT ON (uid) uid, kept, reason, caption
                         FROM {mb} ORDER BY uid, kept DESC) y USING (uid)""")
    count = con.execute("""SELECT count(*) FILTER (WHERE kept_a IS NOT NULL),
        count(*) FILTER (WHERE kept_b IS NOT NULL), count(*) FILTER (WHERE kept_a AND kept_b),
        count(*) FILTER (WHERE kept_a AND NOT coalesce(kept_b, FALSE)),
        count(*) FILTER (WHERE kept_b AND NOT coalesce(kept_a, FALSE)),
        count(*) FILTER (WHERE kept_b IS NULL), count(*) FILTER (WHERE kept_a IS NULL)
        FROM d""").fetchone()
    assert count is not None
    by_a = dict(con.execute("""SELECT coalesce(reason_b, '(not in B)'), count(*) FROM d
        WHERE kept_a AND NOT coalesce(kept_b, FALSE) GROUP BY 1 ORDER BY 2 DESC, 1""").fetchall())
    by_b = dict(con.execute("""SELECT coalesce(reason_a, '(not in A)'), count(*) FROM d
        WHERE kept_b AND NOT coalesce(kept_a, FALSE) GROUP BY 1 ORDER BY 2 DESC, 1""").fetchall())
    if out is not None:
        with atomic_path(Path(out)) as tmp:
            con.execute(f"""COPY (SELECT * FROM d WHERE kept_a IS DISTINCT FROM kept_b
                OR reason_a IS DISTINCT FROM reason_b ORDER BY uid)
                TO {literal(str(tmp))} (FORMAT parquet)""")
    con.close()
    changes = _changes(ra, rb)
    relevant = set(by_a) | set(by_b)
    changes.sort(key=lambda c: (c.name not in relevant, c.what != "select"))
    return RunDiff(ra, rb, count[0], count[1], count[2], count[3], count[4], by_a, by_b,
                   count[5], count[6], changes, _store(ra), _store(rb))


def _store(sel: Path) -> str | None:
    path = sel / "selection.json"
    return json.loads(path.read_text()).get("store") if path.is_file() else None


def format_diff(d: RunDiff) -> str:
    lines = [f"A: {d.a} ({d.samples_a} samples)", f"B: {d.b} ({d.samples_b} samples)"]
    if d.store_a == d.store_b:
        lines.append(f"store: {d.store_a} (both)")
    else:
        lines.append(f"stores differ: A selects from {d.store_a}, B from {d.store_b}")
    lines += [f"kept in both:       {d.kept_both:>9}", f"kept only in A:     {d.only_a:>9}"]
    lines += [f"  dropped in B by {r}: {n}" for r, n in d.only_a_by_reason.items()]
    lines.append(f"kept only in B:     {d.only_b:>9}")
    lines += [f"  dropped in A by {r}: {n}" for r, n in d.only_b_by_reason.items()]
    if d.missing_in_a or d.missing_in_b:
        lines.append(f"samples only in A's pool: {d.missing_in_b}, only in B's: "
                     f"{d.missing_in_a}")
    lines.append("differences (scorer versions and steps):" if d.changes
                 else "same scorer versions and steps")
    lines += ["  " + c.describe() for c in d.changes]
    return "\n".join(lines)
