"""The schema version of the JSON tables the bench writes, and the check its readers make.

Every JSON table of a run or a study (``metrics.json``, ``evaluation/evaluation.json``,
``evaluation/settings.json``, ``comparison.json``, ``sweep.json``, the study marker) carries
``"schema": SCHEMA``. A reader refuses, in one line, a table written under a newer schema, whose
fields it may misread; a table without the field is from before it existed (schema 1). The
checkpoint's ``state.json`` has its own format version (:mod:`ppl_vae.storage.checkpoint`).

Raise :data:`SCHEMA` when a field changes meaning or a reader could no longer read what a newer
writer writes; adding a field that old readers may ignore needs no new schema.

Layer 1 — may import: the standard library, ``ppl_vae.errors``, :mod:`ppl_vae.storage.atomic`.

Example:
    >>> stamped({"log_px": -93.1})
    {'schema': 1, 'log_px': -93.1}
    >>> check_schema({"schema": 99}, "evaluation.json", "evaluation")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ppl_vae.storage.schema.NewerSchema: evaluation.json (evaluation) has schema 99, newer than the 1 this ppl_vae ...
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import UserError
from .atomic import read_json, write_json

__all__ = ["SCHEMA", "NewerSchema", "stamped", "check_schema", "write_table", "read_table"]

SCHEMA = 1
"""The schema of every JSON table the bench writes (one number for all of them)."""


class NewerSchema(UserError):
    """A table written by a newer ppl_vae than this one: refused rather than misread."""


def stamped(table: dict[str, Any]) -> dict[str, Any]:
    """``table`` with ``"schema": SCHEMA`` first."""
    return {"schema": SCHEMA, **{k: v for k, v in table.items() if k != "schema"}}


def check_schema(value: Any, path: str | os.PathLike, what: str) -> Any:
    """``value`` as read from ``path``; :class:`NewerSchema` (one line) if a newer ppl_vae wrote it.

    Not the caller's error for a corrupt file: a newer table is whole, and is neither replaced nor
    trained over (a study with ``--overwrite`` retrains a run whose files are corrupt, not this one).
    """
    schema = value.get("schema", 1) if isinstance(value, dict) else 1
    if isinstance(schema, int) and not isinstance(schema, bool) and schema <= SCHEMA:
        return value
    raise NewerSchema(
        f"{path} ({what}) has schema {schema!r}, newer than the {SCHEMA} this ppl_vae reads: "
        "a newer ppl_vae wrote it (pip install -U ppl_vae to read it)"
    )


def write_table(path: str | os.PathLike, table: dict[str, Any]) -> None:
    """Write ``table`` as JSON, atomically, stamped with :data:`SCHEMA`."""
    write_json(path, stamped(table))


def read_table(path: str | os.PathLike, what: str, error: type = UserError) -> Any:
    """The JSON in ``path`` (see :func:`~ppl_vae.storage.atomic.read_json`), refused if its schema is newer."""
    return check_schema(read_json(path, what, error=error), path, what)
