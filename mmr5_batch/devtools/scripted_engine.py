"""A scripted test engine: deterministic answers without a model, for testing the pipeline's plumbing.

It is not a reranker. It ranks each window's images darkest first (mean
grey level of the decoded picture: more ink, higher rank), which tests can
control by drawing images of known shades, and it misbehaves on purpose when
the question carries a marker, so every path of the job can be driven
through the real Ray pipeline:

- `#repair`: answers with a duplicate and an out-of-range id (status repaired)
- `#garbage`: answers with no answer block (status fallback)
- `#reject`: the engine refuses the request (the query becomes an error record)
- `#die`: the engine's process dies at once (as one killed for memory), every time it is sent this question
- label scores (`score_labels`: fast mode, ZipRerank): each label's score is its image's darkness
- pointwise (`relevance`): P(yes) is the image's darkness / 255, or, for a
  text-only document, the share of the query's words found in its text
- `#ramble`: thinks without end, so `max_new_tokens` cuts it off; given a
  forced answer (`assistant_prefix` ending in `<answer>[`) it finishes the list

Words stand in for tokens: an answer longer than `max_new_tokens` words is cut.

For fault tests it can take time per call (`seconds_per_call`, standing in
for the model's work, so a run is still going when a test kills something)
and leave its process id in a folder (`pid_dir`), so a test can kill the
actor that owns it, with the Ray node it runs on beside it (`<pid>.node`), so
a test can see where Ray placed it. For benchmarks it can note when the
first request of the whole job reached any engine (`first_call_file`: the
first engine to get one creates the file, with the time).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence

from mmr5_batch.config.run import ModelRun
from mmr5_batch.core.engine_protocol import Completion, EngineRequest


def _darkness(data: bytes) -> float:
    from PIL import Image, ImageStat

    with Image.open(io.BytesIO(data)) as picture:
        return 255.0 - ImageStat.Stat(picture.convert("L")).mean[0]


def _question(request: EngineRequest) -> str:
    return request.prompt or "".join(part.get("text", "") for message in request.messages for part in message["content"])


def _scripted_relevance(request: EngineRequest) -> float:
    if request.images:
        return _darkness(request.images[0]) / 255.0
    query, _, document = request.prompt.partition("<Query>:")[2].partition("\n<Document>:")
    document = document.split("<|im_end|>")[0]
    words = set(query.lower().split())
    return len(words & set(document.lower().split())) / max(1, len(words))


def _ray_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _note_first_call(path: str) -> None:
    """Create `path` holding the time, unless another engine already did (exclusive create)."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w") as handle:
        handle.write(repr(time.time()))


class ScriptedTestEngine:
    """Deterministic stand-in for a model; see the module docstring for its script."""

    def __init__(self, think: str = "scripted answer", seconds_per_call: float = 0.0, pid_dir: str | None = None, first_call_file: str | None = None) -> None:
        self.think = think
        self.first_call_file = first_call_file
        self.seconds_per_call = seconds_per_call
        self.calls: list[int] = []  # prompts per generate call, for tests of batching
        if pid_dir:
            os.makedirs(pid_dir, exist_ok=True)
            with open(os.path.join(pid_dir, f"{os.getpid()}.node"), "w") as handle:
                handle.write(_ray_node_id())
            with open(os.path.join(pid_dir, f"{os.getpid()}.pid"), "w") as handle:
                handle.write(str(os.getpid()))

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        if self.first_call_file and not self.calls:
            _note_first_call(self.first_call_file)
        self.calls.append(len(requests))
        if self.seconds_per_call:
            time.sleep(self.seconds_per_call)
        return [self._answer(request) for request in requests]

    def _answer(self, request: EngineRequest) -> Completion:
        question = _question(request)
        if "#die" in question:
            os._exit(137)  # what an out-of-memory kill leaves: no exception, no cleanup
        if "#reject" in question:
            return Completion("", "error", error="scripted rejection (#reject in the question)")
        if request.relevance:
            return Completion("", "stop", prompt_tokens=len(question.split()), relevance=_scripted_relevance(request))
        n = len(request.images)
        ranked = sorted(range(1, n + 1), key=lambda position: -_darkness(request.images[position - 1]))
        if request.score_labels:
            scores = tuple(_darkness(request.images[index]) / 255.0 for index in range(len(request.score_labels)))
            return Completion("", "stop", prompt_tokens=len(question.split()), generated_tokens=0, id_scores=scores)
        if request.assistant_prefix.endswith("<answer>["):
            text = f"{', '.join(map(str, ranked))}]</answer>"
            return Completion(text, "stop", prompt_tokens=len(question.split()), generated_tokens=len(text.split()))
        if "#ramble" in question:
            words = ["<think>", *["hmm,"] * request.sampling.max_new_tokens]
            text = " ".join(words[: request.sampling.max_new_tokens])
            return Completion(text, "length", prompt_tokens=len(question.split()), generated_tokens=request.sampling.max_new_tokens)
        if "#garbage" in question:
            text = f"<think>{self.think}</think> I cannot decide."
        elif "#repair" in question:
            ids = [ranked[0], ranked[0], n + 7, *ranked[1:-1]]
            text = f"<think>{self.think}</think><answer>[{', '.join(map(str, ids))}]</answer>"
        else:
            text = f"<think>{self.think}</think><answer>[{', '.join(map(str, ranked))}]</answer>"
        return Completion(text, "stop", prompt_tokens=len(question.split()), generated_tokens=len(text.split()))


def create_scripted_engine(spec: ModelRun) -> ScriptedTestEngine:
    """The `scripted-test` backend (registered as an `mmr5_batch.backends` entry point in pyproject.toml)."""
    return ScriptedTestEngine(**spec.model.engine_kwargs)
