"""Planning and accounting without Ray: shard keys, settings fingerprints, dropping done rows, planner dead letters."""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from mmr5_batch.config import load_config, public_dump
from mmr5_batch.core.layouts import PAIRS
from mmr5_batch.core.rows import DEAD_LETTER_KEEP
from mmr5_batch.job.accounting import shard_summary as summarise
from mmr5_batch.job.dead_letters import unaddressable_dead_letters
from mmr5_batch.job.fingerprint import job_fingerprint
from mmr5_batch.job.planner import ShardPlan, _mark_unaddressable
from mmr5_batch.job.shard_reader import drop_query_ids
from mmr5_batch.output.layout import shard_key


def test_shard_keys_are_stable_readable_and_distinct():
    root = "bucket/in"
    key = shard_key(root, "bucket/in/2026/11/part-0001.parquet")
    assert key.startswith("2026__11__part-0001-") and key == shard_key(root, "bucket/in/2026/11/part-0001.parquet")
    # "a/b" and "a__b" flatten alike; the hash of the full path keeps them apart.
    assert shard_key(root, "bucket/in/a/b.parquet") != shard_key(root, "bucket/in/a__b.parquet")
    assert shard_key("bucket/in/x.parquet", "bucket/in/x.parquet").startswith("x-")
    assert "/" not in shard_key(root, "bucket/in/we ird/na:me.parquet")


def test_fingerprint_changes_with_result_settings_only():
    def fingerprint(**overrides):
        return job_fingerprint(public_dump(load_config(None, {"input": "in", "output": "out", **overrides})))

    base = fingerprint()
    assert fingerprint(**{"execution.actors": 8, "execution.batch_size": 64}) == base
    other = fingerprint(**{"images.image_tokens": 512})
    assert other.digest != base.digest
    assert base.difference(other) == "images.image_tokens: 1024 -> 512"
    # The protocol settings enter only when away from MM-R5's: outputs written before they existed keep their
    # fingerprint (these digests are the previous version's, for the defaults and the same-model cascade).
    assert base.digest == "a70f759ce268ce37" and fingerprint(**{"cascade.enabled": True}).digest == "3ed5cf257d9ba114"
    two_models = fingerprint(**{"cascade.enabled": True, "cascade.first_pass": "pointwise"})
    assert "cascade.scorer.name: None -> 'Qwen/Qwen3-VL-Reranker-2B'" in fingerprint(**{"cascade.enabled": True}).difference(two_models)
    assert fingerprint(**{"model.protocol": "pointwise"}).digest != base.digest
    assert fingerprint(**{"scorer.name": "other"}) == base  # the scorer counts only when it runs


NOTHING_WRITTEN: dict[str, set[str]] = defaultdict(set)


def test_done_rows_are_dropped():
    table = pa.table({"query_id": ["q1", "q2", " ", None]})
    assert drop_query_ids(table, frozenset({"q1", None})).to_pydict() == {"query_id": ["q2"]}
    assert drop_query_ids(table, frozenset()) is table


def grouped(query_id, docs=("d1", "d2"), extra="x"):
    return {"query_id": query_id, "query": "q", "candidates": [{"doc_id": d, "score": 1.0 - i / 10} for i, d in enumerate(docs)], "domain": extra}


def test_repeated_and_missing_ids_become_one_dead_letter_per_row():
    a = ShardPlan("a", "s3://b/a", "a-1", "f")
    b = ShardPlan("b", "s3://b/b", "b-1", "f")
    _mark_unaddressable([a, b], "grouped", {"s3://b/a": ["dup", "ok", None], "s3://b/b": ["dup", "fine"]}, NOTHING_WRITTEN)
    assert set(a.unaddressable) == {"dup", None} and set(b.unaddressable) == {"dup"}
    table = pa.Table.from_pylist([grouped("dup"), grouped("ok"), grouped(None)])
    letters = unaddressable_dead_letters(a, table, "run", "model").to_pylist()
    assert [(l["query_id"], l["reason"]) for l in letters] == [
        ("dup", "query_id appears 2 times in the input; none of them is reranked"),
        (None, "missing query_id"),
    ]
    assert list(letters[0])[: len(DEAD_LETTER_KEEP)] == list(DEAD_LETTER_KEEP)
    assert letters[0]["source_path"] == "s3://b/a" and letters[0]["first_stage_doc_ids"] == ["d1", "d2"] and letters[0]["domain"] == "x"


def test_pairs_query_spread_over_shards_is_one_dead_letter_per_shard():
    a = ShardPlan("a", "s3://b/a", "a-1", "f", layout=PAIRS)
    b = ShardPlan("b", "s3://b/b", "b-1", "f", layout=PAIRS)
    _mark_unaddressable([a, b], PAIRS, {"s3://b/a": ["q", "q", "solo"], "s3://b/b": ["q"]}, NOTHING_WRITTEN)
    assert "spread over 2 shards" in a.unaddressable["q"] and "solo" not in a.unaddressable
    rows = [{"query_id": "q", "query": "t", "doc_id": d, "score": s} for d, s in (("low", 0.1), ("high", 0.9))]
    [letter] = unaddressable_dead_letters(
        a, pa.Table.from_pylist([*rows, {"query_id": "solo", "query": "t", "doc_id": "x", "score": 1.0}]), "r", "m"
    ).to_pylist()
    assert letter["query_id"] == "q" and letter["first_stage_doc_ids"] == ["high", "low"]


def test_a_shard_is_complete_when_every_query_is_written_once():
    def shard_summary(written):
        return summarise("a", "f", 4, {"dup"}, written)

    written = pa.table(
        {
            "query_id": ["q1", "q2", "dup", "dup"],
            "status": ["ok", "error", "error", "error"],
            "first_stage_doc_ids": [["a", "b"], ["a"], [], []],
            "windows": [1, None, None, None],
        }
    )
    stats = shard_summary(written)
    assert stats["complete"] and stats["counters"]["queries"] == 4 and stats["counters"]["error"] == 3
    assert stats["counters"]["candidates"] == 3 and stats["counters"]["windows"] == 1
    twice = pa.concat_tables([written, written.slice(0, 1)])
    assert shard_summary(twice)["repeated_queries"] == 1 and not shard_summary(twice)["complete"]
    assert not shard_summary(written.slice(0, 3))["complete"]


def test_the_first_written_copy_of_a_repeated_id_stands():
    a, b, c = (ShardPlan(name, f"s3://b/{name}", f"{name}-1", "f") for name in "abc")
    ids = {"s3://b/a": ["q", "x"], "s3://b/b": ["q", "y"], "s3://b/c": ["y"]}
    _mark_unaddressable([a, b, c], "grouped", ids, {"s3://b/a": {"q"}, "s3://b/b": set(), "s3://b/c": set()})
    assert "q" not in a.unaddressable  # written earlier: it stands
    assert "the copy already written for s3://b/a stands" in b.unaddressable["q"]
    assert "appears 2 times" in b.unaddressable["y"] and "appears 2 times" in c.unaddressable["y"]  # none written: all out


def test_a_new_familys_protocol_enters_the_fingerprint_only_for_its_own_runs():
    from mmr5_batch.config.run import resolve_run

    def fingerprint(**overrides):
        return job_fingerprint(public_dump(resolve_run(load_config(None, {"input": "in", "output": "out", **overrides})).config))

    # MM-R5's resolved run keeps the digest outputs written before families existed carry.
    assert fingerprint().digest == "a70f759ce268ce37"
    ziprerank = fingerprint(**{"model.name": "mtri-admin/ZipRerank"})
    assert ziprerank.settings["model"]["protocol"] == "ziprerank" and ziprerank.settings["ranking"]["window"] == 20
