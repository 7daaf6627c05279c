"""What a checkpoint's files must hold: the fields of ``state.json`` and the safetensors header, each checked.

``state.json`` carries a format tag and version, the epoch and step, the config and the run's
``extra`` (tables the run layer checks), the Python and NumPy RNG states, the optimizer's
settings and the layout of its tensors, the name and sha256 of each tensor file, and (version 2)
the sha256 of its own content (:func:`state_digest`). :func:`validate_state` checks every field
and names the first bad one; :func:`parse_header` checks a safetensors header — its 8-byte
little-endian length, then JSON whose every tensor entry fits the file — before safetensors is
asked to read a byte. Writing and reading checkpoints is :mod:`ppl_vae.storage.checkpoint`'s.

Layer 1 — may import: the standard library, torch (dtypes), ``ppl_vae.errors``, ``.atomic``.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .atomic import sha256_bytes

__all__ = ["FORMAT", "VERSION", "READS", "DTYPES", "state_digest", "validate_state", "parse_header"]

FORMAT = "ppl_vae-checkpoint"
VERSION = 2  # 2: state.json carries its own sha256
READS = (1, 2)
MAX_HEADER_BYTES = 100 << 20

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def state_digest(state: dict[str, Any]) -> str:
    """sha256 of ``state`` without its own ``sha256`` field, over canonical JSON."""
    body = {k: v for k, v in state.items() if k != "sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8"))


def _is_int(v: Any, low: int | None = None, high: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low) and (high is None or v <= high)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _words(v: Any, n: int) -> bool:
    """A list of ``n`` unsigned 32-bit integers (a Mersenne Twister's state)."""
    return isinstance(v, list) and len(v) == n and all(_is_int(w, 0, 2**32 - 1) for w in v)


def _check_rng(rng: Any) -> str | None:
    if not isinstance(rng, dict) or set(rng) != {"python", "numpy"}:
        return "rng must hold the python and numpy generator states"
    py = rng["python"]
    if not (
        isinstance(py, list)
        and len(py) == 3
        and py[0] == 3
        and _words(py[1], 625)
        and py[1][-1] <= 624
        and (py[2] is None or _is_number(py[2]))
    ):
        return "rng.python is not a Mersenne Twister state"
    np_ = rng["numpy"]
    if not (
        isinstance(np_, list)
        and len(np_) == 5
        and np_[0] == "MT19937"
        and _words(np_[1], 624)
        and _is_int(np_[2], 0, 624)
        and _is_int(np_[3], 0, 1)
        and _is_number(np_[4])
    ):
        return "rng.numpy is not a Mersenne Twister state"
    return None


def _check_optimizer(optimizer: Any) -> str | None:
    if optimizer is None:
        return None
    if not isinstance(optimizer, dict) or set(optimizer) != {"param_groups", "state"}:
        return "optimizer must hold param_groups and state"
    groups = optimizer["param_groups"]
    if not isinstance(groups, list) or not groups:
        return "optimizer.param_groups must be a non-empty list"
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            return "each optimizer param group must list its params"
        if not all(_is_int(p, 0) for p in group["params"]):
            return "optimizer params must be non-negative integers"
        for key, value in group.items():
            if key == "params":
                continue
            if not (
                value is None
                or isinstance(value, bool)
                or _is_number(value)
                or (isinstance(value, list) and all(_is_number(x) for x in value))
            ):
                return f"optimizer setting {key!r} must be a number, a flag or a list of numbers"
            if _is_number(value) and not math.isfinite(value):
                return f"optimizer setting {key!r} must be finite"
    ids = {p for g in groups for p in g["params"]}
    state = optimizer["state"]
    if not isinstance(state, dict):
        return "optimizer.state must be a table"
    for pid, entry in state.items():
        if not (pid.isdigit() and int(pid) in ids) or not isinstance(entry, dict):
            return f"optimizer.state has an entry {pid!r} for no parameter"
        for key, value in entry.items():
            if not (value == "tensor" or _is_number(value) or isinstance(value, bool)):
                return f"optimizer.state[{pid}][{key!r}] must be a number or 'tensor'"
    return None


def _check_files(files: Any) -> str | None:
    if not isinstance(files, dict) or set(files) != {"weights", "state"}:
        return "it does not list the weights and state files"
    for role, entry in files.items():
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            return f"the {role} file must be a .safetensors file in the checkpoint, got {name!r}"
        digest = entry.get("sha256")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            return f"the {role} file has no valid sha256"
    return None


def validate_state(state: Any, path: Path) -> dict[str, Any]:
    """Check every field of a parsed ``state.json``; raise :class:`CheckpointError` naming the first bad one."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ppl_vae checkpoint (format tag missing or foreign)")
    version = state.get("version")
    if version not in READS:
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this ppl_vae reads {READS[-1]}")
    fields = {"format", "version", "epoch", "step", "config", "rng", "optimizer", "files", "extra"}
    if version >= 2:
        fields.add("sha256")
    if set(state) != fields:
        extra, missing = sorted(set(state) - fields), sorted(fields - set(state))
        raise CheckpointError(f"{path}: unexpected fields {extra} / missing fields {missing}")
    if version >= 2 and state["sha256"] != state_digest(state):
        raise CheckpointError(f"{path} does not match its own sha256 (corrupt or edited); refusing to load it")
    problems = [
        None if _is_int(state["epoch"], 0) else "epoch must be a non-negative integer",
        None if _is_int(state["step"], 0) else "step must be a non-negative integer",
        None if isinstance(state["config"], dict) else "config must be a table",
        None if isinstance(state["extra"], dict) else "extra must be a table",
        _check_files(state["files"]),
        _check_rng(state["rng"]),
        _check_optimizer(state["optimizer"]),
    ]
    problem = next((p for p in problems if p), None)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return state


def parse_header(data: bytes, file: Path) -> dict[str, Any]:
    """The safetensors header of ``data``: 8 bytes of little-endian length, then that many bytes of JSON.

    Every tensor entry is checked (dtype, shape, offsets inside the file and consistent with the
    shape), so a file that passes is one safetensors will read exactly. The layout is read before
    any magic is looked for: a header length whose low byte is 0x80 looks like a pickle's first opcode.
    """
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else -1
    if not 2 <= n <= min(MAX_HEADER_BYTES, len(data) - 8) or data[8:9] != b"{":
        if data[:1] == b"\x80" or data[:2] == b"PK":  # a pickle or a zip (torch.save) file
            raise CheckpointError(f"{file} is a pickle/zip file, not safetensors; refusing to load it")
        raise CheckpointError(f"{file} is not a safetensors file (its header does not parse)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{file} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file} has a corrupt safetensors header")
    size = len(data) - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise CheckpointError(f"{file} has corrupt safetensors metadata")
            continue
        ok = (
            isinstance(info, dict)
            and info.get("dtype") in DTYPES
            and isinstance(info.get("shape"), list)
            and all(_is_int(s, 0) for s in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(_is_int(o, 0) for o in info["data_offsets"])
        )
        if ok:
            begin, end = info["data_offsets"]
            itemsize = torch.empty((), dtype=DTYPES[info["dtype"]]).element_size()
            ok = begin <= end <= size and end - begin == math.prod(info["shape"]) * itemsize
        if not ok:
            raise CheckpointError(f"{file} has a corrupt safetensors header (tensor {name!r})")
    return {k: v for k, v in header.items() if k != "__metadata__"}
