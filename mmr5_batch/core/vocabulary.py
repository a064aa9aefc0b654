"""The words the job's parts share: row statuses, decided-by labels, MM-R5's answer markup, fast mode's window limit.

Every module that writes or reads one of these names takes it from here, so
a status or a tag is spelled in exactly one place.
"""

from __future__ import annotations

# A result row's status. A query's status is its worst window's.
OK = "ok"  # every window answered with a well-formed permutation
REPAIRED = "repaired"  # an answer was found but needed fixing (duplicates, out-of-range or missing ids)
FALLBACK = "fallback"  # some window gave no usable answer: its input order was kept
FAST = "fast"  # ranked from first-token scores (fast mode), not by reasoning
POINTWISE = "pointwise"  # ranked by a pointwise scorer's P(yes) per candidate (the pointwise protocol)
ZIPRERANK = "ziprerank"  # ranked by ZipRerank's letter logits, one forward pass per window (the ziprerank protocol)
ERROR = "error"  # the query could not be reranked: a dead letter with a reason
STATUSES = (OK, REPAIRED, FALLBACK, FAST, POINTWISE, ZIPRERANK, ERROR)
RANKED_STATUSES = (OK, REPAIRED, FALLBACK, FAST, POINTWISE, ZIPRERANK)
SEVERITY = {OK: 0, FAST: 0, POINTWISE: 0, ZIPRERANK: 0, REPAIRED: 1, FALLBACK: 2}

# Which pass put a candidate at its final position (the result's `decided_by`).
DETAIL = "detail"  # the cascade's detail pass (full-budget images)
FIRST_PASS = "first_pass"  # the cascade's first pass (small images), below the detail pass's top
MODEL = "model"  # the model, without a cascade
FIRST_STAGE = "first_stage"  # not reranked (below --top-k, or nothing to compare): first-stage order
FLAGGED = "flagged"  # the candidate had no usable image: ranked last
JINA_M0 = "jina-m0"  # jina-reranker-m0's score head decided it (alone, or as the two-model cascade's scorer)
# POINTWISE (above) labels positions a pointwise yes/no scorer decided in the two-model cascade (below the detail
# pass's top); ZIPRERANK those ZipRerank's windows decided; JINA_M0 those jina-reranker-m0 scored.
DECIDED_BY = (DETAIL, FIRST_PASS, POINTWISE, ZIPRERANK, JINA_M0, MODEL, FIRST_STAGE, FLAGGED)

# The reranker protocols (model.protocol): MM-R5's listwise reasoning, a pointwise yes/no scorer, or ZipRerank's
# listwise letter logits (one forward pass per window, nothing generated but the first token).
MM_R5 = "mm-r5"
PROTOCOLS = (MM_R5, POINTWISE, ZIPRERANK)
# What model.protocol may name: a protocol, or a family that speaks one (jina-reranker-m0 is pointwise: one pair per
# prompt, ordered by its score head) where nothing in the checkpoint's type tells it apart.
PROTOCOL_SETTINGS = (*PROTOCOLS, JINA_M0)
# The pointwise protocol's answer words: its score is P(yes) against "no" at the first answer position.
RELEVANCE_YES = "yes"
RELEVANCE_NO = "no"

# MM-R5's answer markup: `<think>reasoning</think><answer>[3, 1, 2]</answer>`, ids 1-based.
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
# Generation stops at the end of the answer: nothing after it is used.
ANSWER_STOP = ANSWER_CLOSE
# Where an answer's list begins, and how a complete one ends.
ANSWER_LIST_OPEN = ANSWER_OPEN + "["
ANSWER_LIST_CLOSE = "]" + ANSWER_CLOSE
# Appended to reasoning cut at the thinking budget, so the model must answer next.
FORCED_ANSWER = THINK_CLOSE + ANSWER_LIST_OPEN
# Fast mode skips the reasoning: an empty think block, then the answer list begins.
FAST_PREFIX = THINK_OPEN + THINK_CLOSE + ANSWER_LIST_OPEN

# Fast mode scores each id as the answer's first token: ids 1..9 are one token each
# in Qwen's tokenizer (it splits numbers into digits), so a window holds at most 9.
FAST_MAX_WINDOW = 9
