"""What planning needs to know of one shard, found by a Ray task next to the data: its layout, its queries, what is written.

A survey opens the shard with pyarrow's native filesystem, reads its schema
and its `query_id` column only, and reads the `query_id` column of the files
already written for it. It returns counts, and the ids as 64-bit hashes
(8 bytes each, for finding ids repeated across shards on the driver), never
the ids themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch.core.arrow_types import conform_array
from mmr5_batch.core.layouts import GROUPED, InputSchemaError, detect_layout, input_type_problem
from mmr5_batch.errors import error_line
from mmr5_batch.storage.arrow_filesystems import arrow_filesystem, read_parquet
from mmr5_batch.storage.filesystems import Storage


def id_hashes(values: list[str]) -> np.ndarray:
    """Stable 64-bit hashes of query ids (the same in every process and run)."""
    from pandas.util import hash_array

    return hash_array(np.asarray(values, dtype=object), categorize=False) if values else np.zeros(0, dtype=np.uint64)


def query_ids(column: Any) -> list[str | None]:
    """A `query_id` column as strings (integer ids too), a missing or blank id as None."""
    values = conform_array(column.combine_chunks() if hasattr(column, "combine_chunks") else column, pa.string()).to_pylist()
    return [value if value and value.strip() else None for value in values]


def survey_shard(descriptor: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """One row of SURVEY_SCHEMA for the shard `descriptor["uri"]` with written files `descriptor["written"]`."""
    uri = descriptor["uri"]
    try:
        fs, path = arrow_filesystem(storage, uri)
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            schema = parquet.schema_arrow
            found = detect_layout(schema, uri)
            problem = input_type_problem(schema, found.layout, uri)
            if problem:
                return {"uri": uri, "problem": problem}
            ids = query_ids(parquet.read(columns=["query_id"])["query_id"])
    except InputSchemaError as error:
        return {"uri": uri, "problem": str(error)}
    except Exception as error:  # not Parquet, truncated, unreadable
        return {"uri": uri, "problem": f"{uri}: cannot read as Parquet: {error_line(error)}"}
    present = [value for value in ids if value is not None]
    distinct = sorted(set(present))
    written = [value for file in descriptor["written"] for value in read_parquet(storage, file, ["query_id"])["query_id"].to_pylist()]
    done = set(written)
    return {
        "uri": uri,
        "problem": None,
        "layout": found.layout,
        "passthrough": list(found.passthrough),
        "schema": schema.serialize().to_pybytes(),
        "queries": len(ids) if found.layout == GROUPED else len(distinct) + len(ids) - len(present),
        "missing": len(ids) - len(present),
        "written": len(written),
        "ids": id_hashes(present if found.layout == GROUPED else distinct).tobytes(),
        "pending": id_hashes([value for value in distinct if value not in done]).tobytes(),
    }
