"""The committed reference pages are what the code generates (run `make docs` after changing the config or the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmr5_batch.cli.reference_docs import PAGES, configuration_page
from mmr5_batch.config import JobConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reference"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_committed_page_is_what_the_code_generates(name):
    assert (DOCS / name).read_text() == PAGES[name](), f"docs/reference/{name} is stale: run `make docs`"


def test_every_config_field_is_in_the_reference_with_its_description():
    page = configuration_page()
    for section, info in JobConfig.model_fields.items():
        fields = getattr(info.annotation, "model_fields", None)
        for name, field in (fields or {section: info}).items():
            dotted = f"{section}.{name}" if fields else section
            assert f"| `{dotted}` |" in page
            assert field.description and field.description.replace("|", "\\|") in page, dotted
    assert "| `ranking.window` | `int` | `5` | `--window` |" in page
