"""The CPU stage: grouped input rows in, prepared rows out (images fitted to budgets), extra columns passed through.

A Ray Data UDF over Arrow batches. It fetches the batch's image_uri
candidates (within the allowed prefixes, a bounded number at once), then
prepares each row with `core.preparation.prepare_row` (with `images.processing:
cpu-stage` also cutting each distinct picture into the model's patches, once per
task); bad rows and
candidates carry reasons, nothing raises on bad data (an exception is a bug:
the batch fails and Ray retries it). For the pairs layout,
`group_pairs_batch` turns each query_id's rows into one grouped row first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmr5_batch.core.layouts import append_passthrough
from mmr5_batch.core.preparation import PrepareSettings, group_pairs, prepare_row, uris_to_fetch
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA, PREPARED_COLUMNS, READ_PATH, PreparedRow, to_table
from mmr5_batch.engines.image_processors import page_work
from mmr5_batch.stages.contracts import StageContract
from mmr5_batch.storage.fetching import fetch_for_preparation
from mmr5_batch.storage.filesystems import Storage

PREPARE = StageContract(
    "prepare",
    reads=GROUPED_INPUT_SCHEMA.append(pa.field(READ_PATH, pa.string())),
    writes=PREPARED_COLUMNS,
    # A candidate needs a doc_id and one of image / image_uri (each missing one is flagged per candidate).
    optional=frozenset({READ_PATH, "candidates.image", "candidates.image_uri", "candidates.text", "candidates.score"}),
)


@dataclass(frozen=True)
class FetchSettings:
    """How image_uri candidates are read: where from, which prefixes are allowed, how many at once, how often retried."""

    storage: Storage = field(default_factory=Storage)
    allowed_uri_prefixes: tuple[str, ...] = ()
    concurrency: int = 8
    retries: int = 3

    @classmethod
    def from_config(cls, config: Any) -> FetchSettings:
        images = config.images
        return cls(
            storage=Storage(config.storage.s3_options()),
            allowed_uri_prefixes=tuple(images.allowed_uri_prefixes),
            concurrency=images.fetch_concurrency,
            retries=images.fetch_retries,
        )


def prepare_batch(batch: pa.Table, settings: PrepareSettings, fetch: FetchSettings | None = None) -> pa.Table:
    """The Ray Data UDF: grouped input rows in, prepared rows out, extra columns passed through."""
    PREPARE.check_input(batch.schema)
    fetch = fetch or FetchSettings()
    own = set(PREPARE.reads.names)
    rows = batch.select([name for name in batch.column_names if name in own]).to_pylist()
    fetched = fetch_for_preparation(fetch.storage, uris_to_fetch(rows, settings), fetch.allowed_uri_prefixes, fetch.concurrency, fetch.retries)
    # One task's rows share its page work: a page shown to several of its queries is prepared once.
    work = page_work(settings)
    table = to_table([prepare_row(row, settings, fetched, work) for row in rows], PreparedRow)
    PREPARE.check_output(table.schema)
    return append_passthrough(table, batch, own)


def group_pairs_batch(group: pa.Table) -> pa.Table:
    """One grouped row from the pairs rows of one query_id (used with Ray Data's groupby)."""
    return pa.Table.from_pylist([group_pairs(group.to_pylist())])
