"""The run resolved once (config/run.py): 'auto' checked as the protocol it resolves to, and the results digest."""

from __future__ import annotations

import json

import pytest

from mmr5_batch.config import RerankerConfig, config_from_keywords, load_config
from mmr5_batch.config.run import NO_CASCADE, SAME_MODEL, TWO_MODELS, resolve_run
from mmr5_batch.errors import ConfigError
from mmr5_batch.job.fingerprint import run_fingerprint

HUB_POINTWISE = "Qwen/Qwen3-VL-Reranker-2B"


@pytest.fixture
def local_pointwise(tmp_path):
    """A local checkpoint directory whose config.json says Qwen3-VL, named as Qwen3-VL-Reranker (the model type alone
    is Qwen3-VL-Reranker's and ZipRerank's)."""
    folder = tmp_path / "my-qwen3-vl-reranker"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    return str(folder)


def job(**overrides):
    return load_config(None, {"input": "in", "output": "out", **overrides})


REFUSED = [
    ({"ranking.mode": "fast"}, "ranking.mode 'fast' scores MM-R5's answer ids"),
    ({"cascade.enabled": True}, "the same-model cascade is MM-R5's"),
    ({"cascade.enabled": True, "cascade.first_pass": "pointwise"}, "the two-model cascade puts MM-R5 after the pointwise scorer"),
]


@pytest.mark.parametrize(("settings", "reason"), REFUSED)
def test_auto_is_refused_exactly_where_the_protocol_it_resolves_to_is(local_pointwise, settings, reason):
    with pytest.raises(ConfigError, match="model.protocol 'pointwise'") as explicit:
        job(**{"model.name": HUB_POINTWISE, "model.protocol": "pointwise", **settings})
    assert reason in str(explicit.value)
    for name in (HUB_POINTWISE, local_pointwise):
        with pytest.raises(ConfigError) as error:
            job(**{"model.name": name, **settings})
        message = str(error.value)
        # One line naming the protocol 'auto' resolved to, and the same reason as the explicit spelling.
        assert "\n" not in message and f"model.protocol 'auto' (resolved to 'pointwise' for {name!r})" in message and reason in message


def test_an_mm_r5_checkpoint_is_no_scorer_however_it_is_spelled():
    for protocol in ("auto", "mm-r5"):
        with pytest.raises(ConfigError, match="the scorer ranks every candidate before MM-R5, it must be a pointwise model or ZipRerank"):
            job(**{"scorer.name": "i2vec/MM-R5", "scorer.protocol": protocol})


def test_the_resolved_run_says_which_cascade_and_what_each_engine_sees(local_pointwise):
    plain = resolve_run(job())
    assert (plain.cascade, plain.protocol, plain.scorer, plain.config.model.protocol) == (NO_CASCADE, "mm-r5", None, "mm-r5")
    assert [(step.window, step.image_tokens) for step in plain.main.passes] == [(5, 1024)]
    same = resolve_run(job(**{"cascade.enabled": True}))
    assert same.cascade == SAME_MODEL and same.main.window == 10 and same.main.image_tokens == 1024
    assert same.ranking().cascade is not None and same.scoring() is None and [each.tokens for each in same.prepare.pictures] == [None, 256]
    two = resolve_run(job(**{"cascade.enabled": True, "cascade.first_pass": "pointwise", "scorer.name": local_pointwise, "scorer.protocol": "auto"}))
    assert two.cascade == TWO_MODELS and two.ranking().cascade is None and two.ranking().after_scorer == 5
    assert two.scorer is not None and two.scorer.protocol == "pointwise" and two.config.scorer.protocol == "pointwise"
    assert [(step.window, step.image_tokens) for step in two.scorer.passes] == [(1, 256)] and two.scorer.grid == 32
    assert two.prepare.scorer_first and [each.grid for each in two.prepare.pictures] == [28, 32]
    alone = resolve_run(job(**{"model.name": local_pointwise}))
    assert alone.protocol == "pointwise" and alone.config.model.protocol == "pointwise" and alone.prepare.text_documents
    # The resolved config needs no resolving again (an actor gets it as JSON).
    assert resolve_run(alone.config).config == alone.config


def digest(**overrides):
    return run_fingerprint(resolve_run(job(**overrides))).digest


def test_the_digest_follows_what_the_model_sees_not_how_it_is_spelled(local_pointwise):
    for name in (HUB_POINTWISE, local_pointwise):
        auto = digest(**{"model.name": name})
        # 'auto' and the value it resolves to are the same run.
        assert auto == digest(**{"model.name": name, "model.protocol": "pointwise"})
        # Under 'auto' the instruction still changes what the model sees, so the digest.
        assert auto != digest(**{"model.name": name, "model.instruction": "Find the page that answers the question."})
    assert digest() == digest(**{"model.protocol": "mm-r5"})
    # An MM-R5 run does not read the instruction.
    assert digest() == digest(**{"model.instruction": "Find the page that answers the question."})
    assert digest() != digest(**{"images.image_tokens": 512}) and digest() != digest(**{"model.name": "other/checkpoint"})


def test_an_empty_instruction_is_the_default_run():
    assert digest(**{"model.name": HUB_POINTWISE, "model.instruction": ""}) == digest(**{"model.name": HUB_POINTWISE})


def test_the_run_yields_its_model_stages_which_travel_to_an_actor_as_they_are():
    """The stages the Dataset step's actor pools and the in-process Reranker both run: the scorer's then the main
    model's, each with its model, family, settings and batch size; sent to a Ray actor (cloudpickle) a stage arrives
    whole, its family the receiving process's own record, so the actor resolves nothing."""
    import pickle

    from ray import cloudpickle  # what Ray sends actor arguments with

    from mmr5_batch.config.run import RERANK_STAGE, SCORE_STAGE
    from mmr5_batch.core.families import MM_R5_FAMILY, QWEN3_VL_RERANKER
    from mmr5_batch.core.scheduler import rerank_queries_async, score_queries_async

    plain = resolve_run(config_from_keywords(RerankerConfig, backend="scripted-test", batch_size=3))
    [rerank] = plain.stages("run-1")
    assert rerank.name == RERANK_STAGE and rerank.last and rerank.work is rerank_queries_async and rerank.batch_size == 3
    assert rerank.spec is plain.main and rerank.settings == plain.ranking("run-1") and rerank.settings.run_id == "run-1"
    two = resolve_run(config_from_keywords(RerankerConfig, cascade=True, **{"cascade.first_pass": "pointwise", "scorer.batch_size": 7}))
    score, rerank = two.stages()
    assert (score.name, rerank.name) == (SCORE_STAGE, RERANK_STAGE) and not score.last and score.work is score_queries_async
    assert score.spec.family is QWEN3_VL_RERANKER and score.batch_size == 7 and score.settings == two.scoring()
    arrived = pickle.loads(cloudpickle.dumps(score))
    assert arrived == score and arrived.spec.family is QWEN3_VL_RERANKER and pickle.loads(cloudpickle.dumps(rerank)).spec.family is MM_R5_FAMILY
    assert "storage" not in score.spec.model.model_dump()  # a model section: no storage credentials travel with it
