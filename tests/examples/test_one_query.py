"""examples/one_query.py runs as printed: on the scripted engine, and on the tiny model through hf."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import grey_jpeg

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "one_query.py"


def run(*args: str) -> list[int]:
    done = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, check=True)
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_one_query_on_given_pages(tmp_path):
    pages = []
    for number, level in enumerate((180, 20, 100)):
        pages.append(tmp_path / f"p{number}.jpg")
        pages[-1].write_bytes(grey_jpeg(level))
    assert run("--backend", "scripted-test", *map(str, pages)) == [1, 2, 0]


def test_one_query_on_the_tiny_model(tiny_model_dir):
    order = run("--model", tiny_model_dir, "--device", "cpu", "--max-new-tokens", "4")
    assert sorted(order) == [0, 1, 2]
