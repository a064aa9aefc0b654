"""The model's image inputs built in the CPU stage: patches, pads, which pictures get them, each page once."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mmr5_batch.core.engine_protocol import Completion
from mmr5_batch.core.model_inputs import candidate_patches, expand_image_pad_ids, patch_image, patch_rows
from mmr5_batch.core.preparation import PageWork, PicturePass, PrepareSettings, prepare_row
from mmr5_batch.core.scheduler import RankingSettings, rerank_queries_async
from mmr5_batch.engines import SamplingSettings
from mmr5_batch.engines.image_processors import load_image_processor
from tests.conftest import grey_jpeg

PAD = 9


def test_each_image_pad_becomes_its_pictures_tokens_and_its_place_is_recorded():
    ids, places = expand_image_pad_ids([1, PAD, 2, 3, PAD, 4], PAD, [3, 2])
    assert ids == [1, PAD, PAD, PAD, 2, 3, PAD, PAD, 4]
    assert places == [(1, 3), (6, 2)]
    with pytest.raises(ValueError, match="1 image placeholders but 2 images"):
        expand_image_pad_ids([1, PAD], PAD, [3, 2])
    with pytest.raises(ValueError, match="more image placeholders"):
        expand_image_pad_ids([PAD, PAD], PAD, [3])


def test_patches_are_the_processors_raw_uint8_cut_of_the_picture(tiny_model_dir):
    """What vLLM asks the processor for on a device-normalising engine: no rescale, no normalisation, no resize."""
    from mmr5_batch.core.images import prepare_image

    picture = prepare_image(grey_jpeg(77, (200, 300)), 64)
    processor = load_image_processor(tiny_model_dir)
    patches = patch_image(picture.data, processor, 28, picture.tokens)
    rows = patch_rows(patches.patches, patches.grid)
    assert patches.grid == (1, picture.height // 14, picture.width // 14)
    assert rows.dtype == np.uint8 and rows.shape == (picture.height // 14 * picture.width // 14, 3 * 2 * 14 * 14)
    assert patches.tokens(2) == picture.tokens
    assert abs(int(rows.mean()) - 77) <= 2  # raw grey levels, not normalised floats
    again = patch_image(picture.data, processor, 28, picture.tokens)
    assert again == patches  # the key is the content's: equal pictures, equal keys
    assert patch_image(prepare_image(grey_jpeg(78, (200, 300)), 64).data, processor, 28, 64).key != patches.key


def rows_over(pages: list[bytes], queries: int, per_query: int, shift: int) -> list[dict]:
    return [
        {
            "query_id": f"q{q}",
            "query": "which?",
            "candidates": [{"doc_id": f"d{c}", "image": pages[(q * shift + c) % len(pages)], "score": 1 - c / 100} for c in range(per_query)],
        }
        for q in range(queries)
    ]


def test_a_page_shown_to_several_queries_of_a_task_is_decoded_and_processed_once(tiny_model_dir):
    pages = [grey_jpeg(level, (120, 160)) for level in range(20, 200, 20)]  # 9 distinct pages
    work = PageWork(processors=(load_image_processor(tiny_model_dir),))
    settings = PrepareSettings(image_tokens=16, window=5, policy="uniform")
    prepared = [prepare_row(row, settings, work=work) for row in rows_over(pages, 3, 5, 2)]  # pages 0-4, 2-6, 4-8
    assert [row.pages_decoded for row in prepared] == [5, 2, 2]
    assert [row.pages_processed for row in prepared] == [5, 2, 2]
    assert work.decoded == work.processed == 9
    shared = [candidate_patches(row.candidates[index]) for row, index in ((prepared[0], 2), (prepared[1], 0))]
    assert shared[0] == shared[1] and shared[0] is not None  # the same page: the same patches, made once


def test_only_pictures_certain_to_be_sent_get_patches(tiny_model_dir):
    pages = [grey_jpeg(level, (120, 160)) for level in range(10, 250, 12)]  # 20 distinct pages
    processor = load_image_processor(tiny_model_dir)

    def patched(settings, count=20):
        work = PageWork(processors=(processor, processor))
        row = prepare_row(rows_over(pages, 1, count, 0)[0], settings, work=work)
        return [(c.patches(0) is not None, c.patches(1) is not None) for c in row.candidates], row.pages_processed

    plain = PrepareSettings(image_tokens=16, policy="uniform")
    assert patched(plain) == ([(True, False)] * 20, 20)
    assert patched(PrepareSettings(image_tokens=16, policy="uniform", top_k=8)) == ([(True, False)] * 8 + [(False, False)] * 12, 8)
    two_passes = (PicturePass(), PicturePass(tokens=8, first_pass=True))
    cascade = PrepareSettings(image_tokens=16, policy="uniform", pictures=two_passes, detail_top=5)
    # A first pass over all 20: the small pictures; which 5 the detail pass shows is known later (the engine cuts those).
    assert patched(cascade) == ([(False, True)] * 20, 20)
    # No more than detail_top candidates: no first pass, straight to the full budget.
    assert patched(cascade, count=4) == ([(True, False)] * 4, 4)
    # The two-model cascade's scorer judges every candidate on its small picture.
    assert patched(PrepareSettings(image_tokens=16, policy="uniform", pictures=two_passes, detail_top=5, scorer_first=True), count=4) == (
        [(True, True)] * 4,
        8,
    )


class CountingEngine:
    """Stands in for an engine at the boundary: answers every window with its own order, keeps the requests."""

    def __init__(self) -> None:
        self.requests: list = []

    async def generate_async(self, request):
        self.requests.append(request)
        count = len(request.images)
        return Completion(f"<think>.</think><answer>[{', '.join(str(i) for i in range(1, count + 1))}]</answer>", "stop", prompt_tokens=10)


@pytest.mark.parametrize("with_patches", [False, True])
def test_pages_sent_decoded_and_processed_per_query(tiny_model_dir, with_patches):
    """20 candidates in windows of 5 at stride 3: 30 pictures sent for 20 pages. The engine path decodes and processes
    each send again; with the CPU stage's patches each page is decoded and processed once."""
    pages = [grey_jpeg(level, (120, 160)) for level in range(10, 250, 12)]
    work = PageWork(processors=(load_image_processor(tiny_model_dir),) if with_patches else ())
    row = prepare_row(rows_over(pages, 1, 20, 0)[0], PrepareSettings(image_tokens=16, policy="uniform"), work=work)
    engine = CountingEngine()
    settings = RankingSettings(window=5, stride=3, sampling=SamplingSettings(), model_id="m", engine_reads_pixels=True)
    [result] = asyncio.run(rerank_queries_async([row], engine, settings))
    assert result.windows == 6 and result.pages_sent == 30
    assert all(bool(request.image_inputs) == with_patches for request in engine.requests)
    if with_patches:
        assert (result.pages_decoded, result.pages_processed) == (20, 20)
    else:
        assert (result.pages_decoded, result.pages_processed) == (20 + 30, 30)
