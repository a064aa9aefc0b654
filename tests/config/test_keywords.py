"""Configs from flat keywords, dicts and whole sections (the Python API's way), with one-line errors."""

from __future__ import annotations

import pytest

from mmr5_batch.config import JobConfig, RerankerConfig, config_from_keywords, load_config, public_dump
from mmr5_batch.errors import ConfigError


def test_flat_dotted_and_section_keywords_land_in_their_fields():
    config = config_from_keywords(
        RerankerConfig, {"model": {"backend": "vllm"}}, window=4, stride=2, **{"model.name": "m"}, cascade=True, images={"image_tokens": 256}
    )
    assert (config.model.backend, config.model.name, config.ranking.window, config.ranking.stride) == ("vllm", "m", 4, 2)
    assert config.cascade.enabled and config.images.image_tokens == 256


def test_a_job_config_from_a_dict_with_flat_names_equals_the_yaml_way(tmp_path):
    (tmp_path / "job.yaml").write_text("input: in\noutput: out\nranking:\n  window: 4\n  stride: 2\n")
    from_dict = config_from_keywords(JobConfig, {"input": "in", "output": "out", "window": 4}, stride=2)
    assert public_dump(from_dict) == public_dump(load_config(tmp_path / "job.yaml"))
    assert list(public_dump(from_dict))[:2] == ["input", "output"]


def test_a_job_config_is_a_reranker_config():
    job = config_from_keywords(JobConfig, input="in", output="out", window=6, stride=3)
    reranker = config_from_keywords(RerankerConfig, job)
    assert reranker.ranking.window == 6 and not hasattr(reranker, "input")
    assert job.reranker_only() == reranker


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"windw": 5}, r"unknown setting\(s\) \['windw'\]"),
        ({"window": 3, "stride": 5}, "stride .* must be smaller than window"),
        ({"backend": "tpu"}, "model.backend"),
        ({"mode": "fast", "window": 12, "stride": 3}, "at most 9"),
    ],
)
def test_bad_keywords_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as raised:
        config_from_keywords(RerankerConfig, **settings)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"run_id": "../escape"}, "run_id"),
        ({"run_id": "two\nlines"}, "run_id"),
        ({"run_id": ""}, "run_id"),
        ({"output": "/data/in"}, "is the input or inside it"),
        ({"output": "/data/in/results"}, "is the input or inside it"),
        ({"output": "file:///data/in/x/../results"}, "is the input or inside it"),
        ({"input": "s3://b/in", "output": "s3://b/in/out"}, "is the input or inside it"),
    ],
)
def test_job_fields_that_would_write_where_they_must_not_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        config_from_keywords(JobConfig, {"input": "/data/in", "output": "/data/out"}, **settings)


def test_good_job_fields_pass():
    config = config_from_keywords(JobConfig, input="/data/in", output="/data/in_results", run_id="2026-12-01.nightly_1")
    assert config.run_id == "2026-12-01.nightly_1"
    assert config_from_keywords(JobConfig, input="s3://b/in", output="s3://b/out").output == "s3://b/out"
