"""Reranker families as records: detection, and the text Qwen3-Reranker's prompt and cut exact to its reference.

The reference for the text reranker is its model card's code (the published
way to score with it), which cannot be imported: it is re-implemented here,
line for line in what it computes: `prefix` and `suffix` tokenised apart,
the pair `<Instruct>: ..\\n<Query>: ..\\n<Document>: ..` tokenised with
truncation to `max_length - len(prefix) - len(suffix)` (its end cut), then
prefix + pair + suffix. vLLM's template for the model renders the same text.
"""

from __future__ import annotations

import pytest

from mmr5_batch.cli.main import main
from mmr5_batch.config import RerankerConfig, config_from_keywords
from mmr5_batch.config.run import resolve_run
from mmr5_batch.core.families import FAMILIES, MM_R5_FAMILY, QWEN3_RERANKER, QWEN3_VL_RERANKER, detect_family, family_named
from mmr5_batch.core.pointwise import pointwise_request
from mmr5_batch.core.preparation import PageWork, prepare_row, uris_to_fetch
from mmr5_batch.core.rows import PassPicture, PreparedCandidate
from tests.conftest import grey_jpeg

REFERENCE_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
REFERENCE_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
REFERENCE_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def reference_ids(tokenizer, query: str, document: str, max_length: int = 8192, instruction: str | None = None) -> list[int]:
    """The model card's `format_instruction` + `process_inputs`, re-implemented (see the module docstring)."""
    instruction = instruction or REFERENCE_INSTRUCTION
    pair = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
    prefix = tokenizer.encode(REFERENCE_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(REFERENCE_SUFFIX, add_special_tokens=False)
    ids = tokenizer(pair, truncation="longest_first", max_length=max_length - len(prefix) - len(suffix), add_special_tokens=False)["input_ids"]
    return prefix + ids + suffix


def test_detection_reads_the_model_type_then_the_name_and_keeps_a_set_protocol():
    assert detect_family(None, "qwen3", "/any/dir") is QWEN3_RERANKER
    assert detect_family(None, "qwen3_vl", "/any/qwen3-vl-reranker-2b") is QWEN3_VL_RERANKER
    # Two families share Qwen3-VL's model type: unnamed, 'auto' refuses in one line; a protocol set by hand decides.
    with pytest.raises(ValueError, match="cannot tell which reranker '/any/dir' is: its model type 'qwen3_vl' is qwen3-vl-reranker and ziprerank alike"):
        detect_family(None, "qwen3_vl", "/any/dir")
    assert detect_family("pointwise", "qwen3_vl", "/any/dir") is QWEN3_VL_RERANKER
    assert detect_family(None, "qwen2_5_vl", "/x") is detect_family(None, "llama", "/x") is MM_R5_FAMILY
    assert detect_family(None, None, "Qwen/Qwen3-Reranker-8B") is QWEN3_RERANKER
    assert detect_family(None, None, "Qwen/Qwen3-VL-Reranker-8B") is QWEN3_VL_RERANKER
    assert detect_family("pointwise", "qwen3", "/x") is QWEN3_RERANKER
    # A protocol set by hand wins over the checkpoint; its family is then the protocol's default.
    assert detect_family("mm-r5", "qwen3", "/x") is MM_R5_FAMILY and detect_family("pointwise", "qwen2_5_vl", "/x") is QWEN3_VL_RERANKER
    assert {family.name for family in FAMILIES} == {"mm-r5", "qwen3-vl-reranker", "qwen3-reranker", "ziprerank", "jina-reranker-m0"}
    with pytest.raises(ValueError, match="unknown reranker family 'nope'"):
        family_named("nope")


def test_the_text_prompt_is_the_references_token_for_token(tiny_text_reranker_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_text_reranker_dir)
    run = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": tiny_text_reranker_dir}))
    assert run.main.family is QWEN3_RERANKER and run.protocol == "pointwise" and run.config.model.instruction == REFERENCE_INSTRUCTION
    for query, document in [("which page shows revenue?", "Q3 revenue rose 12%"), ("café ünïcode", "naïve résumé — 東京 🚀 text")]:
        request = pointwise_request(
            query, PreparedCandidate(pictures=[PassPicture(image=b"jpeg")], text=document), run.ranking().instruction, family=run.main.family
        )
        assert request.images == () and request.relevance  # a text model is never shown the page's image
        assert tokenizer.encode(request.prompt, add_special_tokens=False) == reference_ids(tokenizer, query, document)
        assert request.prompt == REFERENCE_PREFIX + f"<Instruct>: {REFERENCE_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}" + REFERENCE_SUFFIX
    own = pointwise_request("q", PreparedCandidate(text="d"), "Find the table", family=QWEN3_RERANKER)
    assert tokenizer.encode(own.prompt, add_special_tokens=False) == reference_ids(tokenizer, "q", "d", instruction="Find the table")


def test_a_long_pair_is_cut_at_its_end_as_the_reference_cuts_it(tiny_text_reranker_dir):
    """The CPU stage cuts the pair (instruction, query, document) at `document_tokens` less the prompt's fixed head and
    tail: the prompt sent is the reference's truncated input, id for id; a query that leaves no room flags the page."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_text_reranker_dir)
    limit = 160
    run = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": tiny_text_reranker_dir, "model.document_tokens": limit}))
    long_text = " ".join(f"revenue line {index} of the quarterly table" for index in range(400))
    work = PageWork(tokenizer=tokenizer)
    row = {
        "query_id": "q",
        "query": "revenue table",
        "candidates": [{"doc_id": "long", "text": long_text, "score": 0.9}, {"doc_id": "short", "text": "the revenue table", "score": 0.8}],
    }
    prepared = prepare_row(row, run.prepare, {}, work)
    cut = prepared.candidates[0].text
    assert prepared.error is None and cut and long_text.startswith(cut) and len(cut) < len(long_text)
    request = pointwise_request("revenue table", prepared.candidates[0], run.ranking().instruction, family=run.main.family)
    ours = tokenizer.encode(request.prompt, add_special_tokens=False)
    assert ours == reference_ids(tokenizer, "revenue table", long_text, max_length=limit) and len(ours) == limit
    assert prepared.candidates[1].text == "the revenue table"  # a short pair is whole

    crowded = prepare_row(dict(row, query=" ".join(["revenue"] * 400)), run.prepare, {}, work)
    assert crowded.error is not None and crowded.error.count("the query leaves no room for the document's text within model.document_tokens (160)") == 2


def test_a_text_reranker_needs_text_and_never_reads_images():
    """As the main model: a page with an image and no text is flagged; no image_uri is fetched."""
    run = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": "Qwen/Qwen3-Reranker-0.6B", "backend": "scripted-test"}))
    assert run.main.family is QWEN3_RERANKER and not run.prepare.pictures
    row = {
        "query_id": "q",
        "query": "which?",
        "candidates": [
            {"doc_id": "text", "text": "the words", "image": grey_jpeg(90)},
            {"doc_id": "image", "image": grey_jpeg(90)},
            {"doc_id": "remote", "image_uri": "s3://bucket/page.png"},
            {"doc_id": "blank", "text": "   "},
        ],
    }
    assert uris_to_fetch([row], run.prepare) == []
    prepared = prepare_row(row, run.prepare)
    assert prepared.error is None and prepared.candidates[0].usable and prepared.candidates[0].pictures is None
    assert [candidate.error for candidate in prepared.candidates[1:]] == [
        "candidate has no text, which a text reranker needs",
        "candidate has no text, which a text reranker needs",
        "candidate has no text, which a text reranker needs (its text is blank)",
    ]
    assert prepared.pages_decoded == 0


def test_a_text_scorer_leaves_pictures_to_mm_r5_and_skips_pages_without_text():
    """The two-model cascade with the text reranker first: no first-pass pictures are made; MM-R5's are."""
    settings = {"backend": "scripted-test", "cascade": True, "cascade.first_pass": "pointwise", "scorer.backend": "scripted-test"}
    run = resolve_run(config_from_keywords(RerankerConfig, **settings, **{"scorer.name": "Qwen/Qwen3-Reranker-0.6B"}))
    assert run.scorer is not None and run.scorer.family is QWEN3_RERANKER and run.main.family is MM_R5_FAMILY
    assert len(run.prepare.pictures) == 1 and run.scoring().family == "qwen3-reranker"
    prepared = prepare_row({"query_id": "q", "query": "which?", "candidates": [{"doc_id": "a", "image": grey_jpeg(90), "text": "words"}]}, run.prepare)
    assert prepared.candidates[0].picture(0) is not None and prepared.candidates[0].picture(1) is None


def test_show_prompt_prints_each_familys_exact_prompt(tiny_text_reranker_dir, tiny_pointwise_dir, capsys):
    assert main(["show-prompt", "--query", "revenue?", "--num-candidates", "1", "--model", tiny_text_reranker_dir, "--document", "Q3 table"]) == 0
    expected = REFERENCE_PREFIX + f"<Instruct>: {REFERENCE_INSTRUCTION}\n<Query>: revenue?\n<Document>: Q3 table" + REFERENCE_SUFFIX
    assert capsys.readouterr().out == expected
    assert main(["show-prompt", "--query", "revenue?", "--num-candidates", "1", "--model", tiny_pointwise_dir, "--protocol", "pointwise"]) == 0
    assert "<Instruct>: Given a search query, retrieve relevant candidates that answer the query.<Query>:revenue?" in capsys.readouterr().out
