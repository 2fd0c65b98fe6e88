"""Selector ``metaclip2_balance``: MetaCLIP 2's per-language balancing (Chuang et al., "Meta CLIP
2: A Worldwide Scaling Recipe", 2025; stages 2 and 3 of facebookresearch/MetaCLIP
``metaclip/curation/curate.py``), over what ``metaclip2_match`` found.

Over the rows still kept when the step runs:

1. **Count per text.** ``count[lang][e]`` is the number of texts of language ``lang`` that
   matched entry ``e``, every text of every row counted (``count_per_shard``).
2. **t per language** (``global_count``). English keeps ``t_en`` (170,000); its tail share
   ``p = t_to_p(count[en], t_en)`` gives every other language ``t = p_to_t(count[lang], p)``;
   entry probabilities are ``count_to_prob`` (``t / max(count, t)``, float32 as the authors
   store them). ``curate.lib.metaclip2`` has the three functions; every entry of the
   language's list takes part, unmatched ones included, as in the authors' arrays.
3. **One text per image** (``curate``). Among a row's texts that matched at least one entry,
   one is chosen uniformly; the row is kept with probability ``1 - prod(1 - p[lang][e])`` over
   the chosen text's entries. Rows none of whose texts matched are dropped (reason
   ``metaclip2_balance``).

The authors draw both with Python's unseeded ``random`` (``random.choice`` and
``random.random()``); here each is a splitmix64 hash of (seed, the uid's first 64 bits, a
constant) in [0, 1), as in ``metaclip_balance``: the choice is text ``floor(u * k)`` of the
``k`` eligible texts, and the row is kept when its second draw is at most the probability (the
authors keep unless ``prob < random.random()``). The subset depends on the seed only.

The metadata directory is the one matching used (its ``metadata_dir`` in the selection's scorer
versions, or this step's ``metadata_dir``), checked against the ``metaclip2_metadata`` digest
on every row before anything is changed or written.

Writes ``SEL/entry_counts.parquet`` (lang, entry_id, entry, count_before, count_after, p) and
the report ``SEL/reports/metaclip2_balance.json`` (t and match counts per language, the tail
share). Adds ``metaclip2_text`` (the chosen text's position in the row's list),
``metaclip2_lang`` (its language) and ``metaclip2_keep_p``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.errors import CurateError
from curate.io.atomic import write_parquet
from curate.sql import ident, literal
from curate.stages.base import Params, SelectContext, Selector, register
from curate.stages.metaclip_balance import _flat, draws, per_text, producer_of, uid64

REASON = "metaclip2_balance"
CHOICE_SALT = 2**32  # the "entry" of the text-choice draw (entry ids are below 2**31)
KEEP_SALT = 2**32 + 1  # the "entry" of the keep draw


class Metaclip2BalanceParams(Params):
    path_fields = ("metadata_dir",)  # local paths: saved absolute (curate.saved)
    t_en: int = Field(default=170_000, gt=0)  # English threshold; other languages derive t
    seed: int = 0
    column: str = "metaclip2_entries"
    langs_column: str = "metaclip2_langs"
    metadata_column: str = "metaclip2_metadata"
    metadata_dir: str | None = None  # default: the one matching used


def choose(seed: int, uids: pa.Array, entries: pa.Array) -> np.ndarray:
    """Per row, the position of the chosen text among its texts (-1: none matched)."""
    texts, rows, index = per_text(entries)
    n = len(entries)
    matched = pc.fill_null(pc.list_value_length(texts), 0).to_numpy(
        zero_copy_only=False) > 0
    k = np.bincount(rows[matched], minlength=n)
    u = draws(seed, uid64(uids), np.full(n, CHOICE_SALT, dtype=np.uint64))
    pick = np.floor(u * k).astype(np.int64)  # u < 1, so pick < k
    eligible = np.flatnonzero(matched)
    erows = rows[eligible]
    first = np.zeros(n, dtype=np.int64)
    if len(erows):
        starts = np.flatnonzero(np.r_[True, erows[1:] != erows[:-1]])
        first[erows[starts]] = starts
    rank = np.arange(len(eligible)) - first[erows]
    chosen = np.full(n, -1, dtype=np.int64)
    hit = rank == pick[erows]
    chosen[erows[hit]] = index[eligible[hit]]
    return chosen


def keep_draw(seed: int, uids: pa.Array) -> np.ndarray:
    """The keep draw of each row, in [0, 1)."""
    return draws(seed, uid64(uids), np.full(len(uids), KEEP_SALT, dtype=np.uint64))


def chosen_probability(entries: pa.Array, langs: pa.Array, chosen: np.ndarray,
                       probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """``1 - prod(1 - p[lang][e])`` over the chosen text's entries (NaN: no text chosen); the
    float32 probabilities are combined in float64."""
    n = len(entries)
    out = np.full(n, np.nan)
    rows = np.flatnonzero(chosen >= 0)
    if not len(rows):
        return out
    texts, trows, _ = per_text(entries)
    start = np.zeros(n, dtype=np.int64)
    if len(trows):
        firsts = np.flatnonzero(np.r_[True, trows[1:] != trows[:-1]])
        start[trows[firsts]] = firsts
    picked = pa.array(start[rows] + chosen[rows])
    codes = np.asarray(pc.list_flatten(langs).take(picked).to_pylist(), dtype=object)
    values, parents = _flat(texts.take(picked))
    p = np.zeros(len(values))
    for code in set(codes.tolist()):
        where = (codes == code)[parents]
        p[where] = probs[code][values[where]]
    with np.errstate(divide="ignore"):
        logs = np.bincount(parents, weights=np.log1p(-p), minlength=len(rows))
    out[rows] = 1.0 - np.exp(logs)
    return out


@register
class Metaclip2Balance(Selector):
    name = "metaclip2_balance"
    Params = Metaclip2BalanceParams

    def columns(self) -> Sequence[str]:
        p: Metaclip2BalanceParams = self.params  # type: ignore[assignment]
        return [p.column, p.langs_column, p.metadata_column]

    def reasons(self) -> Sequence[str]:
        return [REASON]

    def extra_columns(self) -> Mapping[str, pa.DataType]:
        return {"metaclip2_text": pa.int32(), "metaclip2_lang": pa.string(),
                "metaclip2_keep_p": pa.float64()}

    def apply(self, con: Any, table: str, ctx: SelectContext) -> None:
        """``count``, ``plan``, ``draw`` and ``finish`` on one table; a partitioned selection
        (``curate.select.partitioned``) runs ``count`` and ``draw`` on each partition and
        ``merge``, ``plan`` and ``finish`` once."""
        counted = self.count(con, table)
        plan = self.plan([counted], ctx)
        self.finish([self.draw(con, table, plan)], plan, ctx)

    def count(self, con: Any, table: str) -> dict[str, Any]:
        """One partition's share of step 1: rows, rows without a match, texts, matches per
        (language, entry), and the metadata digests of its kept rows."""
        prm: Metaclip2BalanceParams = self.params  # type: ignore[assignment]
        t_, col, langs = ident(table), ident(prm.column), ident(prm.langs_column)
        have = con.sql(f"SELECT * FROM {t_} LIMIT 0").columns
        if prm.metadata_column not in have:
            return {"has_metadata_column": False}
        digests = sorted(d for (d,) in con.execute(
            f"SELECT DISTINCT {ident(prm.metadata_column)} FROM {t_} WHERE reason IS "
            f"NULL AND {ident(prm.metadata_column)} IS NOT NULL").fetchall())
        rows_in, unmatched, texts_in = con.execute(f"""
            SELECT count(*), count(*) FILTER (WHERE coalesce(len(flatten({col})), 0) = 0),
                   coalesce(sum(len({col})), 0)
            FROM {t_} WHERE reason IS NULL""").fetchall()[0]
        found = con.execute(f"""
            SELECT l, e, count(*) AS c FROM (
                SELECT l, unnest(es) AS e FROM (
                    SELECT unnest({langs}) AS l, unnest({col}) AS es FROM {t_}
                    WHERE reason IS NULL) WHERE l IS NOT NULL)
            GROUP BY l, e ORDER BY l, e""").fetchall()
        return {"has_metadata_column": True, "digests": digests, "rows_in": int(rows_in),
                "unmatched": int(unmatched), "texts_in": int(texts_in),
                "counts": _dense(found)}

    @staticmethod
    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """Two partitions' ``count`` (or ``draw``) results as one: sums, and per language one
        array of entry counts (the metadata's size, however many partitions report)."""
        if not (a.get("has_metadata_column", True) and b.get("has_metadata_column", True)):
            return {"has_metadata_column": False}
        out: dict[str, Any] = {k: a[k] + b[k] for k in ("rows_in", "unmatched", "texts_in",
                                                        "rows_kept") if k in a}
        out["counts"] = _add(a["counts"], b["counts"])
        if "digests" in a:
            out.update(has_metadata_column=True,
                       digests=sorted(set(a["digests"]) | set(b["digests"])))
        return out

    def plan(self, parts: Sequence[dict[str, Any]], ctx: SelectContext) -> dict[str, Any]:
        """Step 2 over the partitions' counts: the metadata check, t per language and the
        entry probabilities."""
        from curate.lib.metaclip2 import count_to_prob, p_to_t, t_to_p

        prm: Metaclip2BalanceParams = self.params  # type: ignore[assignment]
        total = parts[0]
        for part in parts[1:]:
            total = self.merge(total, part)
        mdir = self._metadata(total, prm, ctx)
        counts: dict[str, np.ndarray] = {}
        for lang in sorted(total["counts"]):
            if lang not in mdir.files:
                raise CurateError(f"metaclip2_balance: texts of language {lang!r} were matched "
                                  f"but {mdir.path} has no {lang}.json",
                                  "balance with the metadata directory matching used")
            counts[lang] = np.zeros(len(mdir.entries(lang)), dtype=np.int64)
            got = total["counts"][lang]
            counts[lang][np.flatnonzero(got)] = got[got > 0]
        en = counts.get("en", np.zeros(0, dtype=np.int64))
        # nothing matched at all: every row is dropped, no t is needed
        tail_share = t_to_p(en, prm.t_en) if counts else None
        ts = {lang: prm.t_en if lang == "en" else p_to_t(c, tail_share)
              for lang, c in counts.items()}
        probs = {lang: count_to_prob(c, ts[lang]) for lang, c in counts.items()}
        return {"mdir": mdir, "counts": counts, "ts": ts, "tail_share": tail_share,
                "probs": probs, "rows_in": total["rows_in"], "unmatched": total["unmatched"],
                "texts_in": total["texts_in"]}

    def draw(self, con: Any, table: str, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Step 3 on one partition (it needs ``plan["probs"]`` only): each kept row's text
        choice and keep draw (by its uid: the same whatever the partition); the entry counts
        of the chosen texts and the rows kept after."""
        prm: Metaclip2BalanceParams = self.params  # type: ignore[assignment]
        t_, col, langs = ident(table), ident(prm.column), ident(prm.langs_column)
        probs, seed = plan["probs"], prm.seed

        def choice_udf(uids: pa.ChunkedArray, entries: pa.ChunkedArray) -> pa.Array:
            got = choose(seed, uids.combine_chunks(), entries.combine_chunks())
            return pa.array(got, mask=got < 0, type=pa.int32())

        def p_udf(entries: pa.ChunkedArray, codes: pa.ChunkedArray,
                  chosen: pa.ChunkedArray) -> pa.Array:
            pick = pc.fill_null(chosen.combine_chunks(), -1).to_numpy(zero_copy_only=False)
            got = chosen_probability(entries.combine_chunks(), codes.combine_chunks(), pick,
                                     probs)
            return pa.array(got, mask=np.isnan(got))

        def u_udf(uids: pa.ChunkedArray) -> pa.Array:
            return pa.array(keep_draw(seed, uids.combine_chunks()))

        con.create_function("_mc2_choice", choice_udf, ["VARCHAR", "INTEGER[][]"], "INTEGER",
                            type="arrow", null_handling="special")
        con.create_function("_mc2_p", p_udf, ["INTEGER[][]", "VARCHAR[]", "INTEGER"], "DOUBLE",
                            type="arrow", null_handling="special")
        con.create_function("_mc2_u", u_udf, ["VARCHAR"], "DOUBLE", type="arrow",
                            null_handling="special")
        try:
            con.execute(f"UPDATE {t_} SET metaclip2_text = _mc2_choice(uid, {col}) "
                        "WHERE reason IS NULL")
            con.execute(f"UPDATE {t_} SET metaclip2_lang = {langs}[metaclip2_text + 1], "
                        f"metaclip2_keep_p = _mc2_p({col}, {langs}, metaclip2_text) "
                        "WHERE reason IS NULL AND metaclip2_text IS NOT NULL")
            con.execute(f"UPDATE {t_} SET reason = {literal(REASON)} WHERE reason IS NULL AND "
                        "(metaclip2_text IS NULL OR NOT _mc2_u(uid) <= metaclip2_keep_p)")
        finally:
            for f in ("_mc2_choice", "_mc2_p", "_mc2_u"):
                con.remove_function(f)
        after = con.execute(f"""
                SELECT metaclip2_lang, e, count(*) FROM (
                    SELECT metaclip2_lang, unnest({col}[metaclip2_text + 1]) AS e FROM {t_}
                    WHERE reason IS NULL) GROUP BY 1, 2""").fetchall()
        rows_kept = con.execute(f"SELECT count(*) FROM {t_} WHERE reason IS NULL").fetchall()[0][0]
        return {"counts": _dense(after), "rows_kept": int(rows_kept)}

    def finish(self, parts: Sequence[dict[str, Any]], plan: Mapping[str, Any],
               ctx: SelectContext) -> None:
        """The entry counts after, summed over the partitions; the table and the report."""
        prm: Metaclip2BalanceParams = self.params  # type: ignore[assignment]
        total = parts[0]
        for part in parts[1:]:
            total = self.merge(total, part)
        counts = plan["counts"]
        after = {lang: np.zeros_like(c) for lang, c in counts.items()}
        for lang, got in total["counts"].items():
            after[lang][np.flatnonzero(got)] = got[got > 0]
        self._write(ctx, plan["mdir"], counts, after, plan["probs"], plan["ts"],
                    plan["tail_share"], {
                        "t_en": prm.t_en, "seed": prm.seed, "tail_share": plan["tail_share"],
                        "rows_in": plan["rows_in"], "rows_kept": total["rows_kept"],
                        "rows_without_match": plan["unmatched"],
                        "texts_in": plan["texts_in"],
                        "metadata_dir": str(plan["mdir"].path.resolve()),
                        "metadata_digest": self._digest})

    def _metadata(self, counted: Mapping[str, Any], prm: Metaclip2BalanceParams,
                  ctx: SelectContext) -> Any:
        from curate.lib.metaclip2 import MetadataDir

        if not counted["has_metadata_column"]:
            raise CurateError(f"metaclip2_balance: the pool has no column "
                              f"{prm.metadata_column!r}", "score the pool with metaclip2_match")
        digests = counted["digests"]
        if len(digests) > 1:
            raise CurateError(f"metaclip2_balance: the rows were matched against "
                              f"{len(digests)} different metadata directories",
                              "match the whole pool with one metadata_dir")
        producer = producer_of(ctx.versions, prm.column)
        matched = (producer.params.get("metadata_dir") if producer is not None
                   and producer.name == "metaclip2_match" else None)
        path = prm.metadata_dir or matched
        hint = ("set metadata_dir: on metaclip2_balance to the directory matching used"
                + (f" ({matched})" if matched else ""))
        if path is None:
            raise CurateError("metaclip2_balance: no metadata directory (the pool's scorer "
                              "versions do not name metaclip2_match's)", hint)
        mdir = MetadataDir(Path(path))
        self._digest = mdir.digest()
        if digests and digests[0] != self._digest:
            raise CurateError(f"metaclip2_balance: the entry ids index the metadata with digest "
                              f"{digests[0]}, but {mdir.path} has digest {self._digest}: its "
                              "entries would be misnamed", hint)
        return mdir

    def _write(self, ctx: SelectContext, mdir: Any, counts: dict[str, np.ndarray],
               after: dict[str, np.ndarray], probs: dict[str, np.ndarray], ts: dict[str, int],
               tail_share: float | None, summary: dict[str, Any]) -> None:
        langs = sorted(counts)
        table = pa.table({
            "lang": pa.array([lang for lang in langs for _ in counts[lang]], pa.string()),
            "entry_id": pa.array(np.concatenate([np.arange(len(counts[lang]))
                                                 for lang in langs]).astype(np.int32)
                                 if langs else np.zeros(0, np.int32)),
            "entry": pa.array([e for lang in langs for e in mdir.entries(lang)], pa.string()),
            "count_before": pa.array(np.concatenate([counts[x] for x in langs])
                                     if langs else np.zeros(0, np.int64)),
            "count_after": pa.array(np.concatenate([after[x] for x in langs])
                                    if langs else np.zeros(0, np.int64)),
            "p": pa.array(np.concatenate([probs[x] for x in langs]).astype(np.float64)
                          if langs else np.zeros(0)),
        })
        write_parquet(table, ctx.out_dir / "entry_counts.parquet")
        summary["languages"] = {
            lang: {"t": int(ts[lang]), "entries": len(counts[lang]),
                   "entries_matched": int((counts[lang] > 0).sum()),
                   "matches_before": int(counts[lang].sum()),
                   "matches_after": int(after[lang].sum()),
                   "head_entries": int((counts[lang] > ts[lang]).sum())} for lang in langs}
        ctx.report("metaclip2_balance", summary)


def _dense(rows: Sequence[tuple[str, int, int]]) -> dict[str, np.ndarray]:
    """(language, entry id, count) rows as one count array per language, indexed by id."""
    out: dict[str, np.ndarray] = {}
    for lang in {r[0] for r in rows}:
        ids = np.array([e for lang_, e, _c in rows if lang_ == lang], dtype=np.int64)
        counts = np.array([c for lang_, _e, c in rows if lang_ == lang], dtype=np.int64)
        out[lang] = np.zeros(int(ids.max()) + 1, dtype=np.int64)
        np.add.at(out[lang], ids, counts)
    return out


def _add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for lang in sorted(set(a) | set(b)):
        x, y = a.get(lang, np.zeros(0, np.int64)), b.get(lang, np.zeros(0, np.int64))
        total = np.zeros(max(len(x), len(y)), dtype=np.int64)
        total[:len(x)] += x
        total[:len(y)] += y
        out[lang] = total
    return out
