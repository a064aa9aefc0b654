"""Prepared rows read from an Arrow batch, and the score stage's rows written back to one, without copying pictures.

A batch of prepared rows carries each picture's patches (megabytes per query)
beside a few small fields. The model stages read the small fields as Python
values and each picture's patches as a read-only view over the batch's own
buffer (`memoryview`: no Python `bytes` per patch, no copy), which the
engine hands on as an array over the same memory. The views keep the batch's
buffers alive for as long as a request holds them. The score stage changes
only small fields, so its output reuses the input's pictures column as it
is (a candidate the scorer flagged loses its pictures, as `flagged` says).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmr5_batch.core.rows import PREPARED_CANDIDATE_TYPE, PassPicture, PreparedCandidate, PreparedRow, arrow_schema, to_table

# The bulk of a batch, each picture pass's patches, read as views over the batch's buffers; and the candidate field the
# score stage passes through unchanged (every pass's pictures with their patches).
VIEWED_FIELDS = ("patches",)
KEPT_FIELDS = ("pictures",)
# Candidate fields that are lists of a row model, read into it.
_NESTED = {"pictures": PassPicture}
_ROW_FIELDS = tuple(field.name for field in dataclasses.fields(PreparedRow) if field.name != "candidates")


def binary_views(array: pa.Array) -> list[memoryview | None]:
    """Each value of a binary or large_binary array as a read-only view of the array's data buffer; None where null."""
    offset_type: np.dtype
    if pa.types.is_large_binary(array.type):
        offset_type = np.dtype(np.int64)
    elif pa.types.is_binary(array.type):
        offset_type = np.dtype(np.int32)
    else:
        raise TypeError(f"binary_views takes binary arrays, not {array.type}")
    if len(array) == 0:
        return []
    _, offsets_buffer, data = array.buffers()
    width = offset_type.itemsize
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type, count=len(array) + 1, offset=array.offset * width).tolist()
    view = (memoryview(data) if data is not None else memoryview(b"")).toreadonly()
    valid = array.is_valid().to_pylist() if array.null_count else [True] * len(array)
    return [view[offsets[index] : offsets[index + 1]] if valid[index] else None for index in range(len(array))]


def _field_values(struct: pa.StructArray, name: str) -> list:
    if struct.type.get_field_index(name) < 0:
        return [None] * len(struct)
    child = struct.field(name)  # sliced to the struct's own offset and length
    if name in VIEWED_FIELDS:
        return binary_views(child)
    if name in _NESTED:
        return _per_row(child, _NESTED[name])
    return child.to_pylist()


def _per_row(lists: pa.ListArray, model: type) -> list[list | None]:
    """Each list of a list-of-struct array as a list of `model`s (None where null), its fields read by `_field_values`."""
    count = len(lists)
    if not count:
        return []
    offsets = lists.offsets.to_pylist()  # absolute positions in `lists.values`, which slicing does not cut
    start, end = offsets[0], offsets[-1]
    struct = lists.values.slice(start, end - start)
    names = [field.name for field in dataclasses.fields(model)]
    fields = {name: _field_values(struct, name) for name in names}
    items = [model(**{name: fields[name][index] for name in names}) for index in range(end - start)]
    valid = lists.is_valid().to_pylist() if lists.null_count else [True] * count
    return [items[offsets[row] - start : offsets[row + 1] - start] if valid[row] else None for row in range(count)]


def _batch_rows(batch: pa.RecordBatch) -> list[PreparedRow]:
    count = batch.num_rows
    names = set(batch.schema.names)
    columns = {name: batch.column(name).to_pylist() if name in names else [None] * count for name in _ROW_FIELDS}
    per_row = _per_row(batch.column("candidates"), PreparedCandidate) if "candidates" in names else [None] * count
    return [PreparedRow(**{name: columns[name][row] for name in _ROW_FIELDS}, candidates=per_row[row] or []) for row in range(count)]


def prepared_rows(table: pa.Table) -> list[PreparedRow]:
    """A table of prepared rows (any chunking, other columns ignored) as row models, the patches as views (see above)."""
    return [row for batch in table.to_batches() for row in _batch_rows(batch)]


def _kept_child(lists: pa.ListArray, name: str) -> pa.Array:
    offsets = lists.offsets
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    struct = lists.values
    if struct.type.get_field_index(name) < 0:
        return pa.nulls(end - start, PREPARED_CANDIDATE_TYPE.field(name).type)
    return struct.field(name).slice(start, end - start)


def scored_table(rows: list[PreparedRow], source: pa.Table) -> pa.Table:
    """The score stage's output: its rows (one per row of `source`, in order, each with as many candidates) as a table
    of prepared rows whose picture columns are the source's own arrays (no copy); a candidate flagged by the scorer
    (an `error` now) has its pictures nulled, as `PreparedCandidate.flagged` drops them."""
    if len(rows) != source.num_rows:
        raise ValueError(f"{len(rows)} scored rows for a batch of {source.num_rows}")
    light = [dataclasses.replace(row, candidates=[dataclasses.replace(c, **dict.fromkeys(KEPT_FIELDS)) for c in row.candidates or []]) for row in rows]
    tables = []
    position = 0
    for batch in source.to_batches():
        part = to_table(light[position : position + batch.num_rows], PreparedRow)
        position += batch.num_rows
        built = part.column("candidates").combine_chunks()  # one chunk: built just now
        struct = built.values
        flagged = struct.field("error").is_valid()
        children = []
        for field in PREPARED_CANDIDATE_TYPE:
            if field.name not in KEPT_FIELDS:
                children.append(struct.field(field.name))
                continue
            kept = _kept_child(batch.column("candidates"), field.name)
            if len(kept) != len(struct):
                raise ValueError("the scorer changed a row's number of candidates")
            dropped = pc.and_(flagged, kept.is_valid())  # pictures of a candidate flagged just now (the CPU stage's have none)
            if pc.any(dropped).as_py():
                kept = pc.if_else(dropped, pa.nulls(len(kept), kept.type), kept)
            children.append(kept)
        candidates = pa.ListArray.from_arrays(built.offsets, pa.StructArray.from_arrays(children, fields=list(PREPARED_CANDIDATE_TYPE)))
        tables.append(part.set_column(part.schema.get_field_index("candidates"), pa.field("candidates", candidates.type), candidates))
    if not tables:
        return arrow_schema(PreparedRow).empty_table()
    return pa.concat_tables(tables)
