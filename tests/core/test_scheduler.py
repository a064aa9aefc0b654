"""The model stage over test engines: batching of rounds, overlap of queries and batches, statuses, flags, top-k."""

from __future__ import annotations

import asyncio

import pytest

from mmr5_batch.core.batching import BatchingEngine
from mmr5_batch.core.engine_protocol import Completion
from mmr5_batch.core.scheduler import rerank_queries, rerank_queries_async
from mmr5_batch.devtools.scripted_engine import ScriptedTestEngine
from mmr5_batch.engines import SamplingSettings


def prepared(query_id, levels, query="which page?", scores=None, errors=None):
    from tests.conftest import grey_jpeg

    scores = scores or [1.0 - i / 100 for i in range(len(levels))]
    errors = errors or [None] * len(levels)
    return {
        "query_id": query_id,
        "query": query,
        "source_path": "shard.parquet",
        "error": None,
        "candidates": [
            {"doc_id": f"d{i}", "pictures": None if err else [{"image": grey_jpeg(level), "tokens": 20}], "score": score, "error": err}
            for i, (level, score, err) in enumerate(zip(levels, scores, errors))
        ],
    }


def run(rows, engine=None, window=5, stride=3, top_k=None, keep_reasoning=False, mode="reasoning"):
    engine = engine or ScriptedTestEngine()
    results = rerank_queries(
        rows,
        engine,
        window=window,
        stride=stride,
        top_k=top_k,
        sampling=SamplingSettings(),
        model_id="m",
        run_id="r",
        keep_reasoning=keep_reasoning,
        mode=mode,
    )
    return results, engine


def test_all_windows_of_a_round_go_to_the_engine_together():
    rows = [prepared("a", [200, 150, 100, 50, 180, 30, 90, 120]), prepared("b", [10, 20, 30]), prepared("c", [90] * 12)]
    results, engine = run(rows)
    # round 1: a, b, c; round 2: a, c; rounds 3-4: c only (12 items -> 4 windows)
    assert engine.calls == [3, 2, 1, 1]
    assert [r.windows for r in results] == [2, 1, 4]


def test_darkest_page_reaches_the_top_and_order_is_a_permutation():
    levels = [200, 150, 100, 180, 120, 160, 30, 90]  # darkest (30) is d6, 7th by first stage
    [result], _ = run([prepared("a", levels)])
    assert result.status == "ok"
    assert result.doc_ids[0] == "d6"
    assert sorted(result.doc_ids) == sorted(f"d{i}" for i in range(8))
    assert result.first_stage_doc_ids == [f"d{i}" for i in range(8)]
    assert result.scores == sorted(result.scores, reverse=True) and result.scores[0] == 1.0
    assert result.image_tokens == 10 * 20


def test_statuses_repaired_fallback_and_error():
    rows = [
        prepared("rep", [100, 50, 10], query="q #repair"),
        prepared("gar", [100, 50, 10], query="q #garbage"),
        prepared("rej", [100, 50, 10], query="q #reject"),
    ]
    results, _ = run(rows, keep_reasoning=True)
    by_id = {r.query_id: r for r in results}
    assert by_id["rep"].status == "repaired" and by_id["rep"].doc_ids[0] == "d2"
    assert by_id["gar"].status == "fallback" and by_id["gar"].doc_ids == ["d0", "d1", "d2"]
    assert by_id["rej"].status == "error" and "scripted rejection" in by_id["rej"].reason
    assert by_id["rej"].doc_ids is None
    assert by_id["rep"].reasoning[0].startswith("<think>")


def test_flagged_candidates_are_ranked_last_with_reasons():
    row = prepared("a", [100, 10, 50, 20], errors=[None, "undecodable image: x", None, None])
    [result], _ = run([row])
    assert result.doc_ids[-1] == "d1"
    assert result.flagged_doc_ids == ["d1"] and result.flag_reasons == ["undecodable image: x"]
    assert result.doc_ids[0] == "d3"


def test_top_k_reranks_the_head_only():
    row = prepared("a", [200, 190, 180, 170, 160, 10, 20, 30])
    [result], _ = run([row], window=3, stride=2, top_k=4)
    assert result.doc_ids[4:] == ["d4", "d5", "d6", "d7"]
    assert result.doc_ids[0] == "d3"


def test_query_level_errors_skip_the_engine():
    row = prepared("a", [10, 20]) | {"error": "empty query"}
    results, engine = run([row])
    assert engine.calls == []
    assert results[0].status == "error" and results[0].reason == "empty query"


class GatedTestEngine:
    """Async test engine: answers like the scripted engine, but holds '#slow' queries until released."""

    def __init__(self):
        self.scripted = ScriptedTestEngine()
        self.release = asyncio.Event()
        self.log: list[str] = []

    async def generate_async(self, request):
        question = "".join(part.get("text", "") for message in request.messages for part in message["content"])
        name = "slow" if "#slow" in question else "fast"
        self.log.append(f"{name} sent")
        if name == "slow":
            await self.release.wait()
        [completion] = self.scripted.generate([request])
        self.log.append(f"{name} done")
        return completion


def test_a_query_moves_to_its_next_window_without_waiting_for_the_others():
    engine = GatedTestEngine()
    rows = [prepared("slow", [90] * 5, query="q #slow"), prepared("fast", [200, 150, 100, 50, 180, 30, 90, 120, 60, 40, 20])]

    async def scenario():
        job = asyncio.create_task(rerank_queries_async(rows, engine, window=5, stride=3, top_k=None, sampling=SamplingSettings(), model_id="m", run_id="r"))
        # The fast query walks all 3 of its windows while the slow one's first is still decoding.
        while engine.log.count("fast done") < 3:
            await asyncio.sleep(0)
            assert not job.done()
        engine.release.set()
        return await job

    results = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert engine.log[:2] == ["slow sent", "fast sent"] and engine.log[-1] == "slow done"
    assert [r.windows for r in results] == [1, 3]
    assert results[1].doc_ids[0] == "d10" and results[1].status == "ok"


def test_batches_in_flight_together_share_engine_calls():
    scripted = ScriptedTestEngine()
    engine = BatchingEngine(scripted)
    settings = dict(window=5, stride=3, top_k=None, sampling=SamplingSettings(), model_id="m", run_id="r")

    async def two_batches():
        return await asyncio.gather(
            rerank_queries_async([prepared("a", [10] * 8), prepared("b", [10] * 3)], engine, **settings),
            rerank_queries_async([prepared("c", [10] * 8)], engine, **settings),
        )

    first, second = asyncio.run(two_batches())
    # round 1: a, b and c in one call; round 2: a and c.
    assert scripted.calls == [3, 2]
    assert [r.query_id for r in first + second] == ["a", "b", "c"]


def test_an_engine_failure_reaches_every_waiting_query():
    class BrokenEngine:
        def generate(self, requests):
            raise RuntimeError("CUDA error: device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        run([prepared("a", [10] * 3), prepared("b", [10] * 3)], engine=BrokenEngine())


def test_thinking_budget_forces_an_answer():
    rows = [prepared("r", [200, 150, 100, 50, 180, 30, 90], query="which? #ramble"), prepared("n", [90, 10])]
    settings = dict(window=5, stride=3, top_k=None, sampling=SamplingSettings(max_new_tokens=100), model_id="m", run_id="r", keep_reasoning=True)
    scripted = ScriptedTestEngine()
    capped, normal = asyncio.run(rerank_queries_async(rows, BatchingEngine(scripted), think_tokens=8, **settings))
    assert capped.status == "ok" and capped.forced_answers == capped.windows == 2
    assert capped.doc_ids[0] == "d5"  # the darkest page, ranked by the forced answers
    assert all("</think><answer>[" in text and text.endswith("]</answer>") for text in capped.reasoning)
    assert all(text.count("hmm,") == 7 for text in capped.reasoning)  # reasoning cut at 8 words
    assert normal.forced_answers == 0 and normal.status == "ok"
    # Without a budget the same query rambles to max_new_tokens and falls back to the first-stage order.
    [unbounded] = rerank_queries(rows[:1], ScriptedTestEngine(), **settings)
    assert unbounded.status == "fallback" and unbounded.forced_answers == 0


def test_forced_prefix_closes_what_is_open():
    from mmr5_batch.core.scheduler import forced_prefix

    assert forced_prefix("<think>so far") == "<think>so far</think><answer>["
    assert forced_prefix("<think>done</think> and") == "<think>done</think> and<answer>["
    assert forced_prefix("<think>x</think><answer>[2, ") == "<think>x</think><answer>[2, "
    assert forced_prefix("<think>x</think><answer>[1]</answer>") is None
    # The answer constraint starts from an empty list: an answer already begun starts over.
    assert forced_prefix("<think>x</think><answer>[2, ", restart_answer=True) == "<think>x</think><answer>["
    assert forced_prefix("<think>so far", restart_answer=True) == "<think>so far</think><answer>["


def test_fast_mode_ranks_from_first_token_scores_in_one_pass_per_window():
    rows = [prepared("a", [200, 150, 100, 50, 180, 30, 90]), prepared("b", [30, 200])]
    results, engine = run(rows, mode="fast")
    assert [r.status for r in results] == ["fast", "fast"]
    assert results[0].doc_ids[0] == "d5" and results[1].doc_ids == ["d0", "d1"]
    assert all(r.generated_tokens == 0 for r in results)
    assert engine.calls == [2, 1]  # one scoring pass per window, windows of a round together


def test_cascade_ranks_the_list_cheaply_then_the_top_in_detail():
    import io

    from PIL import Image

    from mmr5_batch.core.scheduler import Cascade
    from tests.conftest import grey_jpeg

    class RecordingEngine(ScriptedTestEngine):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def generate(self, requests):
            self.sizes += [{Image.open(io.BytesIO(image)).size for image in request.images} for request in requests]
            return super().generate(requests)

    levels = [200, 150, 100, 50, 180, 30, 90, 120, 60, 170, 20, 140]  # darkest: d10, then d5, d3
    row = prepared("a", levels)
    for candidate, level in zip(row["candidates"], levels):
        candidate["pictures"].append({"image": grey_jpeg(level, (28, 28)), "tokens": 1})
    engine = RecordingEngine()
    [result] = rerank_queries(
        [row],
        engine,
        window=3,
        stride=2,
        top_k=None,
        sampling=SamplingSettings(),
        model_id="m",
        run_id="r",
        cascade=Cascade(first_window=6, first_stride=4, detail_top=3),
    )
    assert result.doc_ids[:3] == ["d10", "d5", "d3"]
    assert result.decided_by == ["detail"] * 3 + ["first_pass"] * 9
    first_pass = [sizes for sizes in engine.sizes if sizes == {(28, 28)}]
    detail = [sizes for sizes in engine.sizes if (28, 28) not in sizes]
    assert len(first_pass) == 3 and len(detail) == 1 and len(engine.sizes) == 4  # 12 in windows of 6 step 4; top 3 once
    assert result.windows == 4 and result.image_tokens == 3 * 6 * 1 + 3 * 20


def test_without_cascade_positions_are_decided_by_the_model_or_the_first_stage():
    row = prepared("a", [200, 190, 180, 170, 160, 10], errors=[None, None, None, None, None, "undecodable image: x"])
    [result], _ = run([row], window=3, stride=2, top_k=4)
    assert result.decided_by == ["model"] * 4 + ["first_stage", "flagged"]


def test_a_bug_while_ranking_one_query_fails_the_batch_instead_of_hiding_as_a_dead_letter():
    from mmr5_batch.core import ranking

    original = ranking.parse_ranking

    def parse_or_explode(text, n):
        if "EXPLODE" in text:
            raise OverflowError("a parser bug on this answer")
        return original(text, n)

    class Scripted:
        """Answers every query; one query's answer carries the marker the broken parser trips on."""

        engine = ScriptedTestEngine(think="EXPLODE")

        async def generate_async(self, request):
            completion = self.engine.generate([request])[0]
            if "#explode" not in str(request.messages):
                completion = Completion(completion.text.replace("EXPLODE", "fine"), completion.finish_reason)
            return completion

    rows = [prepared("good", [10, 200, 100]), prepared("bad", [10, 20], query="q #explode")]
    ranking.parse_ranking = parse_or_explode
    try:
        # A programming error is loud: the batch fails (Ray retries it; if it persists the job stops with it).
        with pytest.raises(OverflowError, match="a parser bug on this answer"):
            asyncio.run(rerank_queries_async(rows, Scripted(), window=5, stride=3, sampling=SamplingSettings(), model_id="m"))
        # Without the bug both queries are ranked.
        results = asyncio.run(rerank_queries_async(rows[:1], Scripted(), window=5, stride=3, sampling=SamplingSettings(), model_id="m"))
    finally:
        ranking.parse_ranking = original
    assert results[0].status == "ok" and results[0].doc_ids[0] == "d0"


class RefusesOnePicture:
    """The scripted engine, refusing every request that shows the page drawn at level 20 (a picture it will not take)."""

    def __init__(self) -> None:
        from tests.conftest import grey_jpeg

        self.refused = grey_jpeg(20)
        self.engine = ScriptedTestEngine()
        self.requests = 0

    async def generate_async(self, request):
        self.requests += 1
        if self.refused in request.images:
            return Completion("", "error", error="engine rejected the request: cannot process this picture")
        return self.engine.generate([request])[0]


def test_a_candidate_that_makes_the_engine_refuse_its_window_is_flagged_and_the_query_goes_on():
    engine = RefusesOnePicture()
    rows = [prepared("q", [200, 20, 120, 60, 90, 30, 150])]
    [result] = asyncio.run(rerank_queries_async(rows, engine, window=5, stride=3, sampling=SamplingSettings(), model_id="m"))
    assert result.status == "ok" and result.flagged_doc_ids == ["d1"]
    assert result.flag_reasons == ["engine rejected the request: cannot process this picture"]
    # The rest ranked by the windows (the scripted engine: darkest first), the refused candidate last: window [2, 7)
    # ranks d5 d3 d4 d2 d6; window [0, 5) is refused for d1, which is set aside; the window again over d0 d5 d3 d4 d2.
    assert result.doc_ids == ["d5", "d3", "d4", "d2", "d0", "d6", "d1"]
    assert result.decided_by == ["model"] * 6 + ["flagged"]
    # Only the window that showed it was probed, one request per candidate.
    assert result.windows == 2 and engine.requests == 2 + 5 + 1
    # A window the engine refuses whatever it holds stays the query's dead letter.
    [failed] = asyncio.run(rerank_queries_async([prepared("r", [20, 20])], engine, window=5, stride=3, sampling=SamplingSettings(), model_id="m"))
    assert failed.status == "error" and "cannot process this picture" in failed.reason
