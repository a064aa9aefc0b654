from __future__ import annotations

import pytest

from mmr5_batch.config import ConfigError, JobConfig, config_to_yaml, load_config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: in\noutput: out\nranking:\n  window: 6\n  stride: 2\nimages:\n  image_tokens: 512\n")
    config = load_config(path, {"ranking.stride": 4, "images.image_tokens": None, "model.name": "m"})
    assert config.ranking.window == 6 and config.ranking.stride == 4
    assert config.images.image_tokens == 512
    assert config.model.name == "m"


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, {"input": "a", "output": "b", "ranking.top_k": 20}).with_run_id()
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(path) == config
    assert config.run_id


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"ranking.window": 5, "ranking.stride": 5}, "ranking: stride (5) must be smaller than window (5)"),
        ({"model.backend": "tgi"}, "model.backend"),
        ({"images.image_tokens": 2}, "images.image_tokens"),
        ({"ranking.windw": 3}, "ranking.windw"),
    ],
)
def test_bad_config_is_one_readable_line(overrides, fragment):
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"input": "a", "output": "b", **overrides})
    message = str(caught.value)
    assert "\n" not in message and fragment in message and message.startswith("invalid job config")


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_is_described():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation)

    walk(JobConfig)
