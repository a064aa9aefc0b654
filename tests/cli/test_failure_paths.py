"""Every way the command line can fail before any work: one line on stderr, `mmr5-batch: error: ...`, exit 2.

(Failures once Ray is up, like "no GPU available" or a broken stage
contract, are covered where a Ray session exists: tests/job/test_pipeline.py,
tests/job/test_bad_input.py.)
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmr5_batch.cli.main import main
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA


@pytest.fixture
def shard(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=GROUPED_INPUT_SCHEMA), tmp_path / "in" / "s.parquet")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "typo.yaml").write_text("ranking:\n  windw: 4\n")
    (tmp_path / "notes.jsonl").write_text('{"doc_name": "x"}\n')
    return tmp_path


CASES = [
    (["rerank", "--input", "{t}/missing", "--output", "{t}/out"], "input not found"),
    (["rerank", "--output", "{t}/out"], "invalid job config: input: Field required"),
    (["rerank", "--input", "{t}/in", "--output", "{t}/out", "--config", "{t}/nope.yaml"], "config file not found"),
    (["rerank", "--input", "{t}/in", "--output", "{t}/out", "--config", "{t}/bad.yaml"], "is not valid YAML"),
    (["rerank", "--input", "{t}/in", "--output", "{t}/out", "--config", "{t}/list.yaml"], "must hold a mapping"),
    (["rerank", "--input", "{t}/in", "--output", "{t}/out", "--config", "{t}/typo.yaml"], "ranking.windw: Extra inputs are not permitted"),
    (["rerank", "--input", "{t}/in", "--output", "{t}/out", "--window", "3", "--stride", "3"], "stride (3) must be smaller than window (3)"),
    (["rerank", "--input", "{t}/in", "--output", "{t}/in/out"], "is the input or inside it"),
    (["rerank", "--input", "{t}/in", "--output", "{t}/out", "--run-id", "../x"], "run_id"),
    (["rerank", "--input", "{t}/in", "--output", "{t}/out", "--mode", "fast", "--window", "12", "--stride", "3"], "at most 9"),
    (["plan", "--input", "{t}/missing"], "input not found"),
    (["evaluate", "--run", "{t}/out", "--qrels", "{t}/q.trec", "--k", "0"], "--k must be positive integers"),
    (["evaluate", "--run", "{t}/out", "--qrels", "{t}/missing.trec"], "qrels not found"),
    (
        ["convert", "mmdocir", "--pages", "{t}/p.parquet", "--annotations", "{t}/notes.jsonl", "--run", "{t}/r.trec", "--output", "{t}/c"],
        "not an MMDocIR annotation line",
    ),
    (["show-prompt", "--query", "q", "--num-candidates", "2", "--model", "{t}/no-such-model"], ""),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(case[0][:2]) + f" {index}" for index, case in enumerate(CASES)])
def test_a_failure_is_one_line_and_exit_2(shard, capsys, argv, words):
    code = main([part.format(t=shard) for part in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("mmr5-batch: error: ") and words in lines[0], lines
