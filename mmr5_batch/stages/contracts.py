"""Declared stage contracts: the columns each Ray stage reads and writes, with their types, checked on its batches.

A stage declares what it reads (required columns, and columns it reads
when present) and what it writes, as Arrow schemas taken from the row
models (core/rows.py). A batch without a required column, or with a column
of another type, stops the stage with one `ContractError` naming the stage
and the column, instead of a column silently read as nulls. The check
compares schemas only (no data is scanned), so it costs microseconds per
batch.

Types are compared by kind, not by exact width: any string type reads as a
string, any integer as an integer, an integer or float as a float, a list
of any list kind as a list, a struct by the fields the stage reads. An
all-null column (Arrow's null type) fits any type.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from mmr5_batch.errors import ContractError


def _kind(arrow_type: pa.DataType) -> str:
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


def type_problem(actual: pa.DataType, expected: pa.DataType, where: str, optional_fields: frozenset[str] = frozenset()) -> str | None:
    """Why `actual` cannot be read as `expected` (naming the column or struct field), or None when it can."""
    if pa.types.is_null(actual):
        return None
    kind, wanted = _kind(actual), _kind(expected)
    if wanted == "float" and kind == "integer":
        return None
    if kind != wanted:
        return f"column '{where}' must be {expected}, got {actual}"
    if kind == "list":
        return type_problem(actual.value_type, expected.value_type, f"{where}[]", optional_fields)
    if kind == "struct":
        present = {actual.field(index).name: actual.field(index).type for index in range(actual.num_fields)}
        for index in range(expected.num_fields):
            field = expected.field(index)
            path = f"{where}.{field.name}"
            if field.name not in present:
                if field.name in optional_fields:
                    continue
                return f"column '{path}' is missing (the struct has {sorted(present)})"
            problem = type_problem(present[field.name], field.type, path, optional_fields)
            if problem:
                return problem
    return None


@dataclass(frozen=True)
class StageContract:
    """What one Ray stage reads and writes; `check_input` / `check_output` raise ContractError naming stage and column."""

    stage: str
    reads: pa.Schema  # columns the stage needs, with the types it reads them as
    writes: pa.Schema  # columns it adds (other input columns pass through)
    # Columns, or struct fields (`candidates.text`), read only when present.
    optional: frozenset[str] = frozenset()

    def check_input(self, schema: pa.Schema) -> None:
        self._check(schema, self.reads, "reads", optional=True)

    def check_output(self, schema: pa.Schema) -> None:
        self._check(schema, self.writes, "writes", optional=False)

    def _check(self, schema: pa.Schema, declared: pa.Schema, verb: str, optional: bool) -> None:
        names = set(schema.names)
        for field in declared:
            if field.name not in names:
                if optional and field.name in self.optional:
                    continue
                raise ContractError(f"stage '{self.stage}' {verb} column '{field.name}' ({field.type}), which the batch lacks; it has {sorted(names)}")
            subfields = frozenset(name.split(".", 1)[1] for name in self.optional if name.startswith(field.name + ".")) if optional else frozenset()
            problem = type_problem(schema.field(field.name).type, field.type, field.name, subfields)
            if problem:
                raise ContractError(f"stage '{self.stage}' {verb} {problem}")
