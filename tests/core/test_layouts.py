"""Which input layout a shard uses, and which of its columns pass through."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mmr5_batch.core.layouts import GROUPED, PAIRS, InputSchemaError, detect_layout


def test_detect_layout():
    grouped = pa.schema(
        [
            ("query_id", pa.string()),
            ("query", pa.string()),
            ("candidates", pa.list_(pa.struct([("doc_id", pa.string()), ("image", pa.binary())]))),
            ("domain", pa.string()),
        ]
    )
    assert detect_layout(grouped, "s").layout == GROUPED
    assert detect_layout(grouped, "s").passthrough == ("domain",)
    pairs = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("doc_id", pa.string()), ("image_uri", pa.string())])
    assert detect_layout(pairs, "s").layout == PAIRS
    with pytest.raises(InputSchemaError, match="shard-7: missing column"):
        detect_layout(pa.schema([("query", pa.string())]), "shard-7")
    with pytest.raises(InputSchemaError, match="clash"):
        detect_layout(grouped.append(pa.field("status", pa.string())), "s")
