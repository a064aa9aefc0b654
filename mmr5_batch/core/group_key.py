"""`execution.group_by`: which columns can be a grouping key, and rows ordered by one.

Grouping only needs equal values next to each other, so a key is any column
of single values whose equality means something: text, bytes (grouped by
their raw bytes, whatever encoding), numbers, booleans, dates and times. A
list, a struct or a map cannot be one, and is refused before any work.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_KEY_KINDS = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_fixed_size_binary,
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_boolean,
    pa.types.is_decimal,
    pa.types.is_temporal,
)


def group_key_problem(column: str, schema: pa.Schema) -> str | None:
    """Why `column` of `schema` cannot group rows (one line), or None when it can."""
    if column not in schema.names:
        return f"execution.group_by: the input has no column {column!r}; its columns are {schema.names}"
    kind = schema.field(column).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if any(check(kind) for check in _KEY_KINDS):
        return None
    return f"execution.group_by: column {column!r} is {kind}; a grouping key must hold single values (text, bytes, a number or a date), not a list or a struct"


def group_key(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A sortable key whose equal values are the column's equal values: text and bytes as their bytes, other kinds
    as their text; a null as empty bytes (a sort needs values; grouping nulls with empty values is harmless)."""
    if pa.types.is_dictionary(array.type):
        array = pc.cast(array, array.type.value_type)
    kind = array.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        keyed = pc.cast(array, pa.large_binary())
    else:
        text = array if pa.types.is_string(kind) or pa.types.is_large_string(kind) else pc.cast(array, pa.large_string())
        keyed = pc.cast(text, pa.large_binary())
    return pc.fill_null(keyed, pa.scalar(b"", pa.large_binary()))


def sorted_by_group(table: pa.Table, column: str) -> pa.Table:
    """`table`'s rows with equal `column` values next to each other (a stable sort on the key: input order within a
    group), in this process: nothing is moved between workers."""
    if table.num_rows < 2:
        return table
    order = pc.sort_indices(pa.table({"key": group_key(table.column(column))}), sort_keys=[("key", "ascending")])
    return table.take(order)
