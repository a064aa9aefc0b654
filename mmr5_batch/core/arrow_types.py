"""Comparing Arrow types by kind, and conforming a table to a schema where the cast loses nothing.

Used by the stage contracts (does a batch have the columns a stage reads?)
and by planning (can a shard be read as the run's input schema?). Kinds,
not widths, decide: any string type reads as a string, any integer as an
integer, an integer as a float, a list of any list kind as a list, a struct
by the fields wanted; an all-null column fits any type. Planning also
accepts an integer where a string is wanted (`query_id` 7 is "7"): that cast
is lossless too.
"""

from __future__ import annotations

import pyarrow as pa


def kind(arrow_type: pa.DataType) -> str:
    types = pa.types
    if types.is_string(arrow_type) or types.is_large_string(arrow_type) or types.is_string_view(arrow_type):
        return "string"
    if types.is_binary(arrow_type) or types.is_large_binary(arrow_type) or types.is_binary_view(arrow_type):
        return "binary"
    if types.is_integer(arrow_type):
        return "integer"
    if types.is_floating(arrow_type):
        return "float"
    if types.is_list(arrow_type) or types.is_large_list(arrow_type) or types.is_list_view(arrow_type):
        return "list"
    if types.is_struct(arrow_type):
        return "struct"
    if types.is_boolean(arrow_type):
        return "boolean"
    return str(arrow_type)


def type_problem(
    actual: pa.DataType, expected: pa.DataType, where: str, optional_fields: frozenset[str] = frozenset(), integers_as_strings: bool = False
) -> str | None:
    """Why `actual` cannot be read as `expected` (naming the column or struct field), or None when it can."""
    if pa.types.is_null(actual):
        return None
    found, wanted = kind(actual), kind(expected)
    if found == "integer" and (wanted == "float" or (wanted == "string" and integers_as_strings)):
        return None
    if found != wanted:
        return f"column '{where}' must be {expected}, got {actual}"
    if found == "list":
        return type_problem(actual.value_type, expected.value_type, f"{where}[]", optional_fields, integers_as_strings)
    if found == "struct":
        present = {actual.field(index).name: actual.field(index).type for index in range(actual.num_fields)}
        for index in range(expected.num_fields):
            field = expected.field(index)
            path = f"{where}.{field.name}"
            if field.name not in present:
                if field.name in optional_fields:
                    continue
                return f"column '{path}' is missing (the struct has {sorted(present)})"
            problem = type_problem(present[field.name], field.type, path, optional_fields, integers_as_strings)
            if problem:
                return problem
    return None


def conform_array(array: pa.Array, target: pa.DataType) -> pa.Array:
    """`array` as `target`: lists and structs rebuilt by field name (fields not in `target` dropped, missing ones null)."""
    if array.type == target:
        return array
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), target)
    if kind(target) == "list":
        if pa.types.is_list_view(array.type):
            array = pa.array(array.to_pylist(), pa.list_(array.type.value_type))
        values = conform_array(array.values, target.value_type)
        offsets = array.offsets.cast(pa.int32())  # a large list's offsets: page images never reach 2**31 per block
        mask = array.is_null() if array.null_count else None
        return pa.ListArray.from_arrays(offsets, values, type=target, mask=mask)
    if kind(target) == "struct":
        names = {array.type.field(index).name for index in range(array.type.num_fields)}
        children = [conform_array(array.field(field.name), field.type) if field.name in names else pa.nulls(len(array), field.type) for field in target]
        return pa.StructArray.from_arrays(children, fields=list(target), mask=array.is_null())
    return array.cast(target)


def conform_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in its order: each column conformed, a missing one all null."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            columns.append(pa.chunked_array([conform_array(chunk, field.type) for chunk in column.chunks], type=field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)
