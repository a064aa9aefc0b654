"""Reranker families as data: one record per family says what the rest of the job needs to know about it.

A protocol is how a model ranks (MM-R5's listwise reasoning windows, or a
pointwise yes/no judgement per pair); a family is one published reranker
speaking it, with its own prompt, pictures, defaults and the model classes
the engines load it with. Two families share the pointwise protocol:
Qwen3-VL-Reranker (an image and/or text per document) and the text
Qwen3-Reranker (text only, its own template, instruction and truncation).
ZipRerank speaks its own: listwise like MM-R5 (windows of pages, from the
end of the list up), but one forward pass per window, the pages ordered by
the next-token scores of their letters, nothing generated. jina-reranker-m0
is pointwise too, but read by a score head, not by P(yes): its relevance is
sigmoid(head - 2.65) at a score token appended to the prompt's ids; it is
chosen by its checkpoint's architecture (`JinaVLForRanking`), its name, or
model.protocol 'jina-m0' (`Family.setting`).
Everything downstream reads the record the resolved run carries
(`config/run.py`), never the family's name.

To add a family: a record here (its prompt renderer in its own module),
its detection (`model_types`, `hub_names`), its tiny checkpoint in
`devtools/tiny_model.py`, and the fidelity tests against its reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmr5_batch.core.images import GRID, QWEN3_VL_GRID
from mmr5_batch.core.jina_prompt import LOGIT_SHIFT, SCORE_TOKEN_ID, render_jina_prompt
from mmr5_batch.core.pointwise_prompt import (
    DEFAULT_INSTRUCTION,
    TEXT_DEFAULT_INSTRUCTION,
    render_pointwise_prompt,
    render_text_pointwise_prompt,
)
from mmr5_batch.core.prompt import build_messages
from mmr5_batch.core.vocabulary import JINA_M0, MM_R5, MODEL, POINTWISE, ZIPRERANK
from mmr5_batch.core.ziprerank_prompt import ANSWER_OPEN_BRACKET, MAX_WINDOW, page_letters, ziprerank_messages

# How a family's document text is cut to `model.document_tokens` (core/preparation.py applies it).
CUT_DOCUMENT_HEAD = "document-head"  # the document alone, its head kept (Qwen3-VL-Reranker's reference)
CUT_PAIR_TAIL = "pair-tail"  # the whole pair (instruction, query, document) cut at its end (Qwen3-Reranker's)

# How a pointwise family's relevance is read from the model (core/engine_protocol.py's `relevance` requests).
YES_NO = "yes-no"  # P(yes) against "no" at the next position: the output head's two rows (Qwen3-VL-Reranker, Qwen3-Reranker)
SCORE_HEAD = "score-head"  # the checkpoint's score MLP at the last position, sigmoid(value - logit_shift) (jina-reranker-m0)

# A pointwise family's prompt for one pair: (query, image shown, document text, instruction) -> the whole prompt.
PromptRenderer = Callable[[str, bool, "str | None", str], str]
# A listwise family's messages for one window: (query, pictures) -> chat messages for the checkpoint's template.
WindowMessages = Callable[[str, int], list[dict[str, Any]]]


@dataclass(frozen=True)
class Family:
    """One reranker family (see the module docstring)."""

    name: str
    protocol: str  # MM_R5, POINTWISE or ZIPRERANK
    reads_pictures: bool  # the model sees the documents' images (False: text only)
    grid: int  # pixels per side of one image token (0 for a text model)
    default_instruction: str  # a pointwise family's '<Instruct>:' line when the config leaves it empty ('' for MM-R5)
    text_cut: str  # CUT_DOCUMENT_HEAD or CUT_PAIR_TAIL
    # The transformers auto class the hf engine loads the checkpoint with.
    hf_auto_class: str
    # vLLM's pooling-runner class for a pointwise family ('' for a generating one).
    vllm_classifier: str
    # config.json `model_type` values that are this family, and lower-case name fragments of its hub ids.
    model_types: tuple[str, ...] = ()
    hub_names: tuple[str, ...] = ()
    # config.json `architectures` that are this family whatever its model type says (checked first).
    architectures: tuple[str, ...] = ()
    # The model.protocol value that names exactly this family ('' : its protocol's name); written into the resolved
    # config, so a config sent on resolves to the same family.
    setting: str = ""
    # A pointwise family: how its relevance is read (YES_NO or SCORE_HEAD), the token ids appended after the
    # prompt's own (jina-reranker-m0's score token), and the shift its score head's output is normalised by.
    relevance_head: str = YES_NO
    prompt_suffix_ids: tuple[int, ...] = ()
    logit_shift: float = 0.0
    # Its reference's most image tokens per picture (0: the config's images.image_tokens); applied where the config
    # leaves images.image_tokens unset.
    image_tokens: int = 0
    render: PromptRenderer | None = None  # a pointwise family's prompt
    # A listwise family's window: its messages, the text its answer starts with, and, for a family ranked by the
    # next-token scores of each page's label (ZipRerank's letters) rather than by a generated answer, those labels.
    window_messages: WindowMessages | None = None
    answer_prefix: str = ""
    score_labels: Callable[[int], tuple[str, ...]] | None = None
    # Its reference's window and stride (0: the config's, MM-R5's 5 and 3) and the most pages one prompt may hold.
    window: int = 0
    stride: int = 0
    max_window: int = 0
    # What its windows' positions are labelled in `decided_by` (and, ranked by label scores, the rows' status).
    decided_by: str = MODEL
    # Its rows' `scores`: rank-derived either way; 'count' n..1 (its reference's n - rank), else 1.0 falling evenly.
    rank_scores: str = "fraction"
    # The sliding windows' last (topmost) one: full size (MM-R5 here), or what is left, as RankGPT's loop leaves it.
    full_last_window: bool = True

    @property
    def protocol_setting(self) -> str:
        """The model.protocol value that selects this family."""
        return self.setting or self.protocol

    @property
    def scorer_label(self) -> str:
        """`decided_by` of the positions this family decides as the two-model cascade's scorer."""
        return POINTWISE if self.decided_by == MODEL else self.decided_by

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Sent to an actor by name: the receiving process's own record (one record per family, compared by identity).
        return family_named, (self.name,)

    def prompt(self, query: str, *, image: bool, text: str | None, instruction: str) -> str:
        if self.render is None:
            raise ValueError(f"the {self.name} family renders its prompts through the chat template, not one pair at a time")
        return self.render(query, image, text, instruction or self.default_instruction)


MM_R5_FAMILY = Family(
    name="mm-r5",
    protocol=MM_R5,
    reads_pictures=True,
    grid=GRID,
    default_instruction="",
    text_cut=CUT_DOCUMENT_HEAD,
    hf_auto_class="AutoModelForImageTextToText",
    vllm_classifier="",
    model_types=("qwen2_5_vl",),
    hub_names=("mm-r5",),
    window_messages=build_messages,
)

QWEN3_VL_RERANKER = Family(
    name="qwen3-vl-reranker",
    protocol=POINTWISE,
    reads_pictures=True,
    grid=QWEN3_VL_GRID,
    default_instruction=DEFAULT_INSTRUCTION,
    text_cut=CUT_DOCUMENT_HEAD,
    hf_auto_class="AutoModelForImageTextToText",
    vllm_classifier="Qwen3VLForSequenceClassification",
    model_types=("qwen3_vl",),
    hub_names=("qwen3-vl-reranker",),
    render=lambda query, image, text, instruction: render_pointwise_prompt(query, image=image, text=text, instruction=instruction),
)

QWEN3_RERANKER = Family(
    name="qwen3-reranker",
    protocol=POINTWISE,
    reads_pictures=False,
    grid=0,
    default_instruction=TEXT_DEFAULT_INSTRUCTION,
    text_cut=CUT_PAIR_TAIL,
    hf_auto_class="AutoModelForCausalLM",
    vllm_classifier="Qwen3ForSequenceClassification",
    model_types=("qwen3",),
    hub_names=("qwen3-reranker",),
    render=lambda query, image, text, instruction: render_text_pointwise_prompt(query, text=text, instruction=instruction),
)

ZIPRERANK_FAMILY = Family(
    name="ziprerank",
    protocol=ZIPRERANK,
    reads_pictures=True,
    grid=QWEN3_VL_GRID,
    default_instruction="",
    text_cut=CUT_DOCUMENT_HEAD,
    hf_auto_class="AutoModelForImageTextToText",
    vllm_classifier="",
    # A fine-tuned Qwen3-VL saved as the generative model: by its model type it is Qwen3-VL-Reranker's base too, so
    # it is ZipRerank only by name (or model.protocol 'ziprerank').
    model_types=("qwen3_vl",),
    hub_names=("ziprerank",),
    window_messages=ziprerank_messages,
    answer_prefix=ANSWER_OPEN_BRACKET,
    score_labels=page_letters,
    window=20,
    stride=10,
    max_window=MAX_WINDOW,
    decided_by=ZIPRERANK,
    rank_scores="count",
    full_last_window=False,
)

JINA_M0_FAMILY = Family(
    name="jina-reranker-m0",
    protocol=POINTWISE,
    reads_pictures=True,
    grid=GRID,  # Qwen2-VL: 14-px patches merged 2x2, as Qwen2.5-VL
    default_instruction="",  # its prompt has no instruction
    text_cut=CUT_DOCUMENT_HEAD,
    # The base Qwen2-VL model; the score head is read from the checkpoint's weights (engines/score_head.py), so no
    # remote code runs.
    hf_auto_class="AutoModelForImageTextToText",
    vllm_classifier="JinaVLForRanking",  # native in vLLM: its pooling runner applies the head and the shift
    # A Qwen2-VL checkpoint is jina-reranker-m0 by its architecture or name, never by its model type alone.
    architectures=("JinaVLForRanking",),
    hub_names=("jina-reranker-m0",),
    setting=JINA_M0,
    relevance_head=SCORE_HEAD,
    prompt_suffix_ids=(SCORE_TOKEN_ID,),
    logit_shift=LOGIT_SHIFT,
    image_tokens=768,  # its reference's max_pixels, 602,112 = 768 x 28 x 28
    render=lambda query, image, text, instruction: render_jina_prompt(query, image=image, text=text),
    decided_by=JINA_M0,
)

# In detection order: the first family of a model type is that type's default.
FAMILIES = (MM_R5_FAMILY, QWEN3_VL_RERANKER, QWEN3_RERANKER, ZIPRERANK_FAMILY, JINA_M0_FAMILY)
# The family a model.protocol value means when nothing about the checkpoint says otherwise.
PROTOCOL_DEFAULT = {MM_R5: MM_R5_FAMILY, POINTWISE: QWEN3_VL_RERANKER, ZIPRERANK: ZIPRERANK_FAMILY, JINA_M0: JINA_M0_FAMILY}


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown reranker family {name!r}; known: {', '.join(family.name for family in FAMILIES)}")


def detect_family(protocol: str | None, model_type: str | None, name: str, architectures: tuple[str, ...] = ()) -> Family:
    """The family of a checkpoint: from its config.json (a local directory) where it has one, its `architectures`
    first (jina-reranker-m0's `JinaVLForRanking`), then its `model_type`; else from its hub id's name. `protocol`:
    model.protocol as set ('mm-r5', 'pointwise', 'ziprerank', 'jina-m0'), None for 'auto'. A checkpoint whose family
    does not speak the protocol set gets that value's default family (a Qwen2.5-VL checkpoint set to 'pointwise'
    is judged as Qwen3-VL-Reranker's format, as before families existed; any checkpoint set to 'jina-m0' is
    jina-reranker-m0's)."""
    lowered = name.lower()
    # Longest fragment first: 'qwen3-vl-reranker' is not the text 'qwen3-reranker'.
    named = sorted(((len(fragment), family) for family in FAMILIES for fragment in family.hub_names if fragment in lowered), key=lambda pair: -pair[0])
    built = next((family for family in FAMILIES if set(architectures) & set(family.architectures)), None)
    if built is not None:
        found: Family | None = built
    elif model_type is not None:
        # The checkpoint's type decides; its name picks among the families of one type (a Qwen3-VL one is
        # Qwen3-VL-Reranker or ZipRerank as named); a type several families share, unnamed, is refused under 'auto'.
        typed = [family for family in FAMILIES if model_type in family.model_types]
        picked = next((family for _, family in named if family in typed), None)
        if picked is None and len(typed) > 1 and protocol is None:
            settings = " or ".join(repr(family.protocol_setting) for family in typed)
            names = " or ".join(repr(fragment) for family in typed for fragment in family.hub_names)
            raise ValueError(
                f"model.protocol 'auto' cannot tell which reranker {name!r} is: its model type {model_type!r} is "
                f"{' and '.join(family.name for family in typed)} alike; set model.protocol ({settings}) or name its folder with {names}"
            )
        found = picked or (typed[0] if typed else None)
    else:
        found = named[0][1] if named else None
    if protocol is None:
        return found or MM_R5_FAMILY
    if found is not None and protocol in (found.protocol_setting, found.protocol):
        return found
    return PROTOCOL_DEFAULT[protocol]
