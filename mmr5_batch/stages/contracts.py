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

from mmr5_batch.core.arrow_types import type_problem
from mmr5_batch.errors import ContractError


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
