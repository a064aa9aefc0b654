"""Backends as records: an installed package's backend is reachable by name, an unknown one is refused in one line."""

from __future__ import annotations

import types

import pytest

from mmr5_batch.config import ConfigError, RerankerConfig, config_from_keywords
from mmr5_batch.config import backends as backend_records
from mmr5_batch.config.backends import Backend, backend_record, known_backends
from mmr5_batch.config.run import resolve_run
from mmr5_batch.engines.factory import check_importable, create_engine
from mmr5_batch.errors import EngineUnavailable


class PluginEngine:
    """An engine an installed package would ship (its builder is what the entry point names)."""

    def __init__(self, spec):
        self.spec = spec

    def generate(self, requests):
        return []


def build_plugin(spec):
    return PluginEngine(spec)


build_plugin.backend_record = Backend("plugin", packages=("no_such_package_here",), reads_pixels=True)  # type: ignore[attr-defined]


@pytest.fixture
def plugin_installed(monkeypatch):
    """The boundary: what importlib.metadata says the installed packages register (here, one more backend)."""
    entries = dict(backend_records.registered())
    entries["plugin"] = types.SimpleNamespace(name="plugin", load=lambda: build_plugin)
    monkeypatch.setattr(backend_records, "registered", lambda: entries)


def test_the_scripted_engine_is_an_installed_backend_and_an_unknown_one_is_refused_in_one_line():
    assert known_backends()[:2] == ("hf", "vllm") and "scripted-test" in known_backends()
    assert backend_record("scripted-test") == Backend("scripted-test") and backend_record("vllm").parallel
    with pytest.raises(ConfigError, match=r"unknown backend 'nope': built in are hf, vllm; installed packages register \[.*'scripted-test'.*\]"):
        config_from_keywords(RerankerConfig, backend="nope")


def test_a_backend_an_installed_package_registers_is_reachable_and_read_from_its_record(plugin_installed):
    run = resolve_run(config_from_keywords(RerankerConfig, backend="plugin", **{"images.processing": "cpu-stage"}))
    # Its record says it reads pixels: the CPU stage cuts patches for it, the scheduler counts its pictures.
    assert run.main.patches_in_cpu_stage and run.ranking().engine_reads_pixels and "plugin" in known_backends()
    with pytest.raises(EngineUnavailable, match="the plugin backend needs no_such_package_here, which this Python cannot import"):
        check_importable(run.main)
    engine = create_engine(run.main)
    assert isinstance(engine, PluginEngine) and engine.spec is run.main
