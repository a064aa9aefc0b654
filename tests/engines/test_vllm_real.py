"""The real vLLM engine on the tiny checkpoint, alone and through the whole pipeline.

Runs wherever vLLM is installed: on a GPU machine with vLLM's CUDA build,
or on a CPU machine with its CPU build (`make test-vllm-cpu` builds that
environment, `.venv-vllm-cpu`, and runs this module in it). Skipped in the
main environment, which has no vLLM; tests/engines/test_vllm_engine.py checks
the same requests there at the engine boundary.
"""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm-cpu, or a GPU machine)")
platforms = pytest.importorskip("vllm.platforms")
torch = pytest.importorskip("torch")
ON_CPU = platforms.current_platform.is_cpu()
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="vLLM's GPU build and no CUDA GPU visible"),
]

from mmr5_batch.config import load_config  # noqa: E402
from mmr5_batch.config.run import resolve_run  # noqa: E402
from mmr5_batch.core.images import prepare_image  # noqa: E402
from mmr5_batch.core.prompt import build_messages  # noqa: E402
from mmr5_batch.core.rows import PassPicture, PreparedCandidate  # noqa: E402
from mmr5_batch.devtools.demo_data import write_demo_dataset  # noqa: E402
from mmr5_batch.engines import EngineRequest, SamplingSettings  # noqa: E402
from mmr5_batch.engines.vllm import AsyncVLLMEngine, VLLMEngine  # noqa: E402
from mmr5_batch.job.runner import run_job  # noqa: E402
from tests.conftest import grey_jpeg, read_folder  # noqa: E402
from tests.support.metrics_export import dashboard_metrics, wait_for  # noqa: E402


def real_config(tiny_model_dir, tmp_path, **overrides):
    values = {
        "input": str(tmp_path / "in"),
        "output": str(tmp_path / "out"),
        "model.name": tiny_model_dir,
        "model.backend": "vllm",
        "model.max_new_tokens": 16,
        "model.min_new_tokens": 4,
        "images.image_tokens": 64,
        # No graph capture or torch.compile: a minute less per engine start on CPU; passed through as given.
        "model.engine_kwargs": {"enforce_eager": True},
        **({"model.device": "cpu", "model.cpu_kv_cache_gib": 1} if ON_CPU else {"model.gpu_memory_utilization": 0.3}),
        **overrides,
    }
    return load_config(None, values)


def window_requests(count):
    images = tuple(prepare_image(grey_jpeg(level, (200, 300)), 64).data for level in (30, 90, 150))
    sampling = SamplingSettings(max_new_tokens=16, min_new_tokens=4)
    return [EngineRequest(build_messages(f"question {i}?", 3), images, sampling) for i in range(count)]


def test_tiny_model_generates_through_real_vllm(tiny_model_dir, tmp_path):
    engine = VLLMEngine.from_run(resolve_run(real_config(tiny_model_dir, tmp_path)).main)
    try:
        completions = engine.generate(window_requests(8))
    finally:
        engine.llm.llm_engine.engine_core.shutdown()  # now, not from an exit hook after pytest closed its streams
    assert len(completions) == 8
    image_tokens = 3 * prepare_image(grey_jpeg(1, (200, 300)), 64).tokens
    for completion in completions:
        assert completion.error is None
        assert 4 <= completion.generated_tokens <= 16
        assert completion.prompt_tokens > image_tokens


def test_tiny_model_generates_through_real_async_vllm(tiny_model_dir, tmp_path):
    import asyncio

    engine = AsyncVLLMEngine.from_run(resolve_run(real_config(tiny_model_dir, tmp_path)).main)

    async def submit_all():
        return await asyncio.gather(*(engine.generate_async(request) for request in window_requests(8)))

    try:
        completions = asyncio.run(submit_all())
    finally:
        engine.engine.shutdown()
    assert [completion.error for completion in completions] == [None] * 8
    assert all(4 <= completion.generated_tokens <= 16 for completion in completions)


@pytest.mark.parametrize("vllm_engine", ["async", "offline"])
def test_whole_pipeline_on_vllm(ray_session, tiny_model_dir, tmp_path, vllm_engine):
    write_demo_dataset(tmp_path / "in", queries=8, candidates=6, shards=2)
    summary = run_job(real_config(tiny_model_dir, tmp_path, **{"model.vllm_engine": vllm_engine}))
    assert summary["totals"]["queries"] == 8 and summary["totals"]["error"] == 0
    assert summary["totals"]["windows"] == 16


def test_the_engines_own_stats_arrive_in_rays_metrics_export(ray_session, tiny_model_dir, tmp_path):
    """vLLM's stat logger for Ray sends the engine's stats beside the job's (on Ray's Prometheus export); the tokens it
    counted are the ones the run summary reports, and the dashboard's vLLM panels name only stats that arrive."""
    write_demo_dataset(tmp_path / "in", queries=4, candidates=6, shards=1)
    # A served name of its own: the stats are labelled by it, apart from the module's other runs of the same checkpoint.
    engine = {"model.engine_kwargs": {"enforce_eager": True, "served_model_name": "stats-probe"}}
    totals = run_job(real_config(tiny_model_dir, tmp_path, **engine))["totals"]
    assert totals["queries"] == 4 and totals["prompt_tokens"] > 0 and totals["generated_tokens"] > 0
    probe = (("model_name", "stats-probe"),)
    samples = wait_for(
        {
            ("ray_vllm_prompt_tokens_total", probe): float(totals["prompt_tokens"]),
            ("ray_vllm_generation_tokens_total", probe): float(totals["generated_tokens"]),
            ("ray_vllm_request_success_total", probe): float(totals["windows"]),
        },
        "vllm_",
    )
    named = dashboard_metrics("ray_vllm_")
    assert named and named <= set(samples), sorted(named - set(samples))


def test_thinking_budget_constraint_and_fast_mode_on_real_vllm(ray_session, tiny_model_dir, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=4, candidates=5, shards=1)
    forced = run_job(real_config(tiny_model_dir, tmp_path, **{"model.think_tokens": 2, "output": str(tmp_path / "forced")}))
    assert forced["totals"]["queries"] == 4 and forced["totals"]["error"] == 0
    # Two tokens cannot hold a reasoning and an answer: every window was made to answer.
    assert [row["forced_answers"] for row in read_folder(tmp_path / "forced" / "ranked")] == [1] * 4
    constrained = run_job(
        real_config(tiny_model_dir, tmp_path, **{"model.think_tokens": 2, "model.constrain_answer": True, "output": str(tmp_path / "constrained")})
    )
    # Random weights, constrained by vLLM's structured outputs: every forced answer is a whole permutation.
    assert constrained["totals"]["ok"] == 4
    for row in read_folder(tmp_path / "constrained" / "ranked"):
        assert row["forced_answers"] == 1 and sorted(row["doc_ids"]) == sorted(row["first_stage_doc_ids"])
        assert row["decided_by"] == ["model"] * 5
    fast = run_job(real_config(tiny_model_dir, tmp_path, **{"ranking.mode": "fast", "output": str(tmp_path / "fast")}))
    assert fast["totals"]["fast"] == 4 and fast["totals"]["generated_tokens"] == 0


def pointwise_requests():
    from mmr5_batch.core.pointwise import pointwise_request
    from mmr5_batch.core.pointwise_prompt import DEFAULT_INSTRUCTION

    image = prepare_image(grey_jpeg(70, (200, 300)), 16, grid=32).data
    return [
        pointwise_request("which page shows revenue?", PreparedCandidate(pictures=[PassPicture(image=image)], text="Q3 revenue"), DEFAULT_INSTRUCTION),
        pointwise_request("which page?", PreparedCandidate(text="a page of text about revenue"), DEFAULT_INSTRUCTION),
        pointwise_request("which page?", PreparedCandidate(pictures=[PassPicture(image=image)]), DEFAULT_INSTRUCTION),
    ]


def test_pointwise_scores_on_vllms_pooling_runner_equal_the_hf_engines(tiny_pointwise_dir, tmp_path):
    """The pooling runner (offline classify and async encode) gives the P(yes) the hf engine's forward pass gives."""
    import asyncio

    from mmr5_batch.engines.hf import HFEngine

    config = real_config(tiny_pointwise_dir, tmp_path, **{"model.dtype": "float32", "images.image_tokens": 16})
    expected = [
        completion.relevance
        for completion in HFEngine.from_config(config.model.model_copy(update={"backend": "hf", "engine_kwargs": {}})).generate(pointwise_requests())
    ]
    offline = VLLMEngine.from_run(resolve_run(config).main)
    try:
        classified = offline.generate(pointwise_requests())
    finally:
        offline.close()
    assert [completion.error for completion in classified] == [None] * 3
    assert [completion.relevance for completion in classified] == pytest.approx(expected, abs=1e-4)

    engine = AsyncVLLMEngine.from_run(resolve_run(config).main)

    async def submit_all():
        return await asyncio.gather(*(engine.generate_async(request) for request in pointwise_requests()))

    try:
        streamed = asyncio.run(submit_all())
    finally:
        engine.close()
    assert [completion.relevance for completion in streamed] == pytest.approx(expected, abs=1e-4)


def test_the_text_rerankers_scores_on_vllm_equal_the_hf_engines_and_its_job_runs(ray_session, tiny_model_dir, tiny_text_reranker_dir, tmp_path):
    """The text Qwen3-Reranker on vLLM's pooling runner (`Qwen3ForSequenceClassification` from the "no"/"yes" rows):
    offline and async, the P(yes) the hf engine's forward pass gives; then the whole job with it as the main model,
    and as the two-model cascade's scorer before MM-R5."""
    import asyncio

    from mmr5_batch.core.families import QWEN3_RERANKER
    from mmr5_batch.core.pointwise import pointwise_request
    from mmr5_batch.engines.hf import HFEngine

    pairs = [("which page shows revenue?", "Q3 revenue rose"), ("who signed?", "the lease was signed by the tenant in May"), ("q", "d")]
    requests = [pointwise_request(query, PreparedCandidate(text=text), "", family=QWEN3_RERANKER) for query, text in pairs]
    config = real_config(tiny_text_reranker_dir, tmp_path, **{"model.dtype": "float32"})
    run = resolve_run(config)
    assert run.main.family is QWEN3_RERANKER
    expected = [
        c.relevance for c in HFEngine.from_config(config.model.model_copy(update={"backend": "hf", "engine_kwargs": {}}), QWEN3_RERANKER).generate(requests)
    ]
    offline = VLLMEngine.from_run(run.main)
    try:
        classified = offline.generate(requests)
    finally:
        offline.close()
    assert [completion.error for completion in classified] == [None] * 3
    assert [completion.relevance for completion in classified] == pytest.approx(expected, abs=1e-4)
    engine = AsyncVLLMEngine.from_run(run.main)

    async def submit_all():
        return await asyncio.gather(*(engine.generate_async(request) for request in requests))

    try:
        streamed = asyncio.run(submit_all())
    finally:
        engine.close()
    assert [completion.relevance for completion in streamed] == pytest.approx(expected, abs=1e-4)

    write_demo_dataset(tmp_path / "in", queries=3, candidates=4, shards=1, page_text=True)
    summary = run_job(real_config(tiny_text_reranker_dir, tmp_path))
    assert summary["totals"]["queries"] == 3 and summary["totals"]["pointwise"] == 3 and summary["totals"]["scored"] == 12
    scorer = {"scorer.name": tiny_text_reranker_dir, "scorer.backend": "vllm", "scorer.engine_kwargs": {"enforce_eager": True}}
    scorer.update({"scorer.device": "cpu", "scorer.cpu_kv_cache_gib": 1} if ON_CPU else {"scorer.gpu_memory_utilization": 0.3})
    cascade = {"cascade.enabled": True, "cascade.first_pass": "pointwise", "cascade.detail_top": 2, "output": str(tmp_path / "cascade")}
    summary = run_job(real_config(tiny_model_dir, tmp_path, **cascade, **scorer))
    assert summary["totals"]["queries"] == 3 and summary["totals"]["error"] == 0 and summary["totals"]["scored"] == 12
    for row in read_folder(tmp_path / "cascade" / "ranked"):
        assert row["decided_by"] == ["detail"] * 2 + ["pointwise"] * 2 and row["windows"] == 1


def test_ziprerank_on_vllm_scores_its_letters_as_the_hf_engine_and_its_job_runs(ray_session, tiny_ziprerank_dir, tmp_path):
    """ZipRerank on vLLM: one generated token per window, the letters' log-probabilities, no text parsed; they differ
    from each other as the hf engine's do (the logits' differences: the same order), offline and async; then the
    whole job on vLLM with its own windows."""
    import asyncio

    from mmr5_batch.core.families import ZIPRERANK_FAMILY
    from mmr5_batch.core.ranking import WindowPlan, plan_query
    from mmr5_batch.core.rows import PreparedRow
    from mmr5_batch.core.scheduler import _request
    from mmr5_batch.engines.hf import HFEngine

    pictures = [prepare_image(grey_jpeg(level, (200, 300)), 16, grid=32).data for level in (30, 90, 150, 210, 250)]
    candidates = [PreparedCandidate(doc_id=f"d{index}", pictures=[PassPicture(image=data, tokens=12)]) for index, data in enumerate(pictures)]
    requests = []
    for count in (5, 3):
        state = plan_query(PreparedRow(query_id="q", query=f"which of {count} pages?", candidates=candidates[:count]), WindowPlan(count, 1))
        requests.append(_request(state, list(range(count)), SamplingSettings(max_new_tokens=1), ZIPRERANK_FAMILY))
    config = real_config(tiny_ziprerank_dir, tmp_path, **{"model.dtype": "float32", "images.image_tokens": 16, "model.protocol": "ziprerank"})
    run = resolve_run(config)
    assert run.main.family is ZIPRERANK_FAMILY
    hf = HFEngine.from_config(config.model.model_copy(update={"backend": "hf", "engine_kwargs": {}}), ZIPRERANK_FAMILY).generate(requests)

    def relative(completion):
        assert completion.error is None and completion.id_scores is not None
        return [score - completion.id_scores[0] for score in completion.id_scores]

    offline = VLLMEngine.from_run(run.main)
    try:
        scored = offline.generate(requests)
    finally:
        offline.close()
    for ours, expected in zip(scored, hf):
        assert relative(ours) == pytest.approx(relative(expected), abs=1e-3) and ours.generated_tokens == 0
    engine = AsyncVLLMEngine.from_run(run.main)

    async def submit_all():
        return await asyncio.gather(*(engine.generate_async(request) for request in requests))

    try:
        streamed = asyncio.run(submit_all())
    finally:
        engine.close()
    for ours, expected in zip(streamed, hf):
        assert relative(ours) == pytest.approx(relative(expected), abs=1e-3)

    write_demo_dataset(tmp_path / "in", queries=3, candidates=25, shards=1)
    summary = run_job(real_config(tiny_ziprerank_dir, tmp_path, **{"images.image_tokens": 16}))
    assert summary["totals"]["queries"] == 3 and summary["totals"]["ziprerank"] == 3 and summary["totals"]["windows"] == 6
    for row in read_folder(tmp_path / "out" / "ranked"):
        assert row["decided_by"] == ["ziprerank"] * 25 and row["scores"][0] == 25.0 and row["generated_tokens"] == 0


def test_jina_on_vllms_native_class_scores_as_the_hf_engine_and_its_job_runs(ray_session, tiny_jina_dir, tmp_path):
    """jina-reranker-m0 on vLLM's pooling runner as its native `JinaVLForRanking` (its head and 2.65 shift vLLM's own),
    the score token appended to the ids we send: the hf engine's scores (the reference's formula, tests/core/
    test_jina.py) for a text page, a picture vLLM processes itself and the same picture as the CPU stage's patches;
    then the whole job on vLLM's async engine with `--protocol jina-m0`."""
    from dataclasses import replace

    from mmr5_batch.core.families import JINA_M0_FAMILY
    from mmr5_batch.core.model_inputs import patch_image
    from mmr5_batch.core.pointwise import pointwise_request
    from mmr5_batch.engines.hf import HFEngine
    from mmr5_batch.engines.image_processors import load_image_processor

    config = real_config(tiny_jina_dir, tmp_path, **{"model.dtype": "float32", "images.image_tokens": 64})
    run = resolve_run(config)
    assert run.main.family is JINA_M0_FAMILY
    pictures = [prepare_image(grey_jpeg(level, (200, 300)), 64).data for level in (40, 200)]
    processor = load_image_processor(tiny_jina_dir)

    def patched(picture):
        cut = patch_image(picture, processor, 28, 64)
        return PreparedCandidate(pictures=[PassPicture(image=picture, patches=cut.patches, grid=list(cut.grid), key=cut.key)])

    candidates = [PreparedCandidate(text="a page of text about the revenue of the year"), patched(pictures[0]), patched(pictures[1])]
    requests = [pointwise_request(f"which page shows revenue {index}?", candidate, "", family=JINA_M0_FAMILY) for index, candidate in enumerate(candidates)]
    engine_side = [replace(request, image_inputs=()) for request in requests]
    hf = HFEngine.from_config(config.model.model_copy(update={"backend": "hf", "engine_kwargs": {}}), JINA_M0_FAMILY)
    expected = [completion.relevance for completion in hf.generate(engine_side)]
    offline = VLLMEngine.from_run(run.main)
    try:
        scored = offline.generate(engine_side + requests[1:])
    finally:
        offline.close()
    assert [completion.error for completion in scored] == [None] * 5
    assert [completion.relevance for completion in scored[:3]] == pytest.approx(expected, abs=1e-4)
    assert [completion.relevance for completion in scored[3:]] == pytest.approx(expected[1:], abs=1e-4)  # from patches

    write_demo_dataset(tmp_path / "in", queries=3, candidates=4, shards=1, page_text=True)
    summary = run_job(real_config(tiny_jina_dir, tmp_path, **{"model.protocol": "jina-m0", "images.image_tokens": 64}))
    assert summary["totals"]["queries"] == 3 and summary["totals"]["pointwise"] == 3 and summary["totals"]["scored"] == 12
    for row in read_folder(tmp_path / "out" / "ranked"):
        assert row["decided_by"] == ["jina-m0"] * 4 and row["scores"] == sorted(row["scores"], reverse=True) and 0 < row["scores"][-1] < 1


def test_two_model_cascade_on_vllm_in_both_pools(ray_session, tiny_model_dir, tiny_pointwise_dir, tmp_path):
    write_demo_dataset(tmp_path / "in", queries=4, candidates=8, shards=1)
    scorer = {"scorer.name": tiny_pointwise_dir, "scorer.backend": "vllm", "scorer.engine_kwargs": {"enforce_eager": True}}
    scorer.update({"scorer.device": "cpu", "scorer.cpu_kv_cache_gib": 1} if ON_CPU else {"scorer.gpu_memory_utilization": 0.3})
    cascade = {"cascade.enabled": True, "cascade.first_pass": "pointwise", "cascade.detail_top": 3, "cascade.first_image_tokens": 16}
    summary = run_job(real_config(tiny_model_dir, tmp_path, **cascade, **scorer))
    assert summary["totals"]["queries"] == 4 and summary["totals"]["error"] == 0 and summary["totals"]["scored"] == 32
    for row in read_folder(tmp_path / "out" / "ranked"):
        assert row["decided_by"] == ["detail"] * 3 + ["pointwise"] * 5 and row["windows"] == 1


def page_jpegs(count):
    """Page-like JPEGs of different sizes and contents (the demo's drawn pages)."""
    import io

    from PIL import Image

    from mmr5_batch.devtools.demo_data import draw_page

    pages = []
    for number in range(count):
        picture = Image.open(io.BytesIO(draw_page(f"Page {number}", [f"Line {i}: value {i * number}" for i in range(12)]))).convert("RGB")
        buffer = io.BytesIO()
        picture.resize((300 + 40 * number, 420)).save(buffer, format="JPEG", quality=90)
        pages.append(buffer.getvalue())
    return pages


def prepared_window(source, count=3, image_tokens=64):
    """Rows prepared by the CPU stage's code with the checkpoint's own image processor: patches built."""
    from mmr5_batch.core.preparation import PageWork, PrepareSettings, prepare_row
    from mmr5_batch.engines.image_processors import load_image_processor

    pages = page_jpegs(count)
    row = {
        "query_id": "q",
        "query": "which page shows value 4?",
        "candidates": [{"doc_id": f"d{i}", "image": page, "score": 1 - i / 10} for i, page in enumerate(pages)],
    }
    settings = PrepareSettings(image_tokens=image_tokens, window=count, policy="uniform")
    work = PageWork(processors=(load_image_processor(source),))
    prepared = prepare_row(row, settings, work=work)
    candidates = prepared.candidates
    assert all(candidate.patches() for candidate in candidates)
    return prepared


def test_patches_from_the_cpu_stage_are_what_vllm_makes_of_the_same_prompt(tiny_model_dir, tmp_path):
    """Token ids, pictures' patches, grids and places in the prompt: the CPU stage's input equals vLLM's own processing."""
    from dataclasses import replace

    from mmr5_batch.core.model_inputs import candidate_patches

    def window(image_tokens):
        prepared = prepared_window(tiny_model_dir, image_tokens=image_tokens)
        candidates = prepared.candidates
        return EngineRequest(
            build_messages(prepared.query, 3),
            tuple(c.picture() for c in candidates),
            SamplingSettings(max_new_tokens=12, min_new_tokens=12),
            image_inputs=tuple(candidate_patches(c) for c in candidates),
        )

    engine = VLLMEngine.from_run(resolve_run(real_config(tiny_model_dir, tmp_path)).main)
    try:
        assert engine.processed is not None, "vLLM's CPU build normalises on the device: it takes patches"
        # The inputs themselves, on pictures nothing else uses (a request processed and never submitted leaves
        # vLLM's processor cache believing its engine core holds the pictures).
        request = window(64)
        processor = engine.llm.llm_engine.input_processor
        params = vllm.SamplingParams(max_tokens=4)
        own = processor.process_inputs("own", engine._prompt(replace(request, image_inputs=())), params, supported_tasks=("generate",))
        ours = processor.process_inputs("ours", engine._prompt(request), params, supported_tasks=("generate",))
        assert ours.prompt_token_ids == own.prompt_token_ids
        assert len(ours.mm_features) == len(own.mm_features) == 3
        for mine, theirs in zip(ours.mm_features, own.mm_features, strict=True):
            assert mine.mm_position == theirs.mm_position
            assert sorted(mine.data) == sorted(theirs.data)
            for key in theirs.data:
                assert mine.data[key].data.dtype == theirs.data[key].data.dtype
                assert torch.equal(mine.data[key].data, theirs.data[key].data), key
                assert type(mine.data[key].field) is type(theirs.data[key].field)
        # Both paths in one call and alone: the same completions (greedy, every token forced to be generated).
        request = window(40)
        in_engine = replace(request, image_inputs=())
        together = engine.generate([in_engine, request])
        alone = engine.generate([request]) + engine.generate([in_engine])
        assert [c.finish_reason for c in together + alone] == ["length"] * 4
        assert len({(c.text, c.generated_tokens, c.prompt_tokens) for c in together + alone}) == 1
    finally:
        engine.close()


def test_pointwise_pairs_from_patches_score_as_vllms_own_processing(tiny_pointwise_dir, tmp_path):
    """The Qwen3-VL reranker on the pooling runner: pairs whose picture comes as the CPU stage's patches get the same
    inputs and the same P(yes) as pairs vLLM processes itself."""
    from dataclasses import replace

    from mmr5_batch.core.model_inputs import patch_image
    from mmr5_batch.core.pointwise import pointwise_request
    from mmr5_batch.core.pointwise_prompt import DEFAULT_INSTRUCTION
    from mmr5_batch.engines.image_processors import load_image_processor

    config = real_config(tiny_pointwise_dir, tmp_path, **{"images.image_tokens": 16})
    engine = VLLMEngine.from_run(resolve_run(config).main)
    try:
        assert engine.processed is not None

        def pair(level, tokens):
            image = prepare_image(grey_jpeg(level, (200, 300)), tokens, grid=32).data
            cut = patch_image(image, load_image_processor(tiny_pointwise_dir), 32, tokens)
            candidate = PreparedCandidate(pictures=[PassPicture(image=image, patches=cut.patches, grid=list(cut.grid), key=cut.key)], text="Q3 revenue")
            return pointwise_request("which page shows revenue?", candidate, DEFAULT_INSTRUCTION)

        probe = pair(50, 16)
        processor = engine.llm.llm_engine.input_processor
        params = vllm.PoolingParams(task="classify")
        own = processor.process_inputs("own", engine._prompt(replace(probe, image_inputs=())), params, supported_tasks=("classify",))
        ours = processor.process_inputs("ours", engine._prompt(probe), params, supported_tasks=("classify",))
        assert ours.prompt_token_ids == own.prompt_token_ids and ours.mm_features[0].mm_position == own.mm_features[0].mm_position
        for key, elem in own.mm_features[0].data.items():
            assert torch.equal(ours.mm_features[0].data[key].data, elem.data), key
        requests = [pair(level, 12) for level in (30, 150)]
        scores = engine.generate([replace(request, image_inputs=()) for request in requests] + requests)
        assert [completion.error for completion in scores] == [None] * 4
        assert [completion.relevance for completion in scores[:2]] == [completion.relevance for completion in scores[2:]]
    finally:
        engine.close()
