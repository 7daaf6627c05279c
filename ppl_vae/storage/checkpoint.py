"""Pickle-free checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint is a directory::

    checkpoint/
      state.json                       # format tag, epoch, config, RNG states, sha256 of each file
      weights-<sha12>.safetensors      # every parameter and buffer of the program
      optimizer-<sha12>.safetensors    # optimizer tensors and the torch RNG state

``state.json`` is the commit point: tensor files are written first under names derived
from their content, then ``state.json`` is replaced atomically, then files it no longer
names are removed. A crash at any moment leaves the previous or the new checkpoint,
never a mix. ``state.json`` carries the sha256 of its own content and of each file.

Loading reads ``state.json`` and the bytes of every file it names once, into memory: the
sha256 is checked on the very bytes that are then parsed, so a file replaced between the
check and the use is never loaded. A reader that meets a checkpoint being replaced (a
file already removed) reads ``state.json`` again and starts over. Every field of
``state.json`` is checked, the safetensors header is parsed (its 8-byte little-endian
length, then that many bytes of JSON — never guessed from a magic byte), and every tensor —
the weights, the optimizer's moments and the RNG states — is checked for its name, shape,
dtype and finiteness against the program and its optimizer before anything is copied into
either. Only regular files are read (a FIFO planted as a file is refused, never waited on).
Nothing is unpickled, so loading runs no code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save, save_model
from torch import nn

from ..errors import CheckpointError
from .atomic import atomic_path, open_regular, sha256_bytes, sha256_file, write_json

__all__ = ["save_checkpoint", "load_checkpoint", "read_state", "read_checkpoint", "state_digest", "FORMAT"]

FORMAT = "ppl_vae-checkpoint"
VERSION = 2  # 2: state.json carries its own sha256
READS = (1, 2)
MAX_STATE_BYTES = 16 << 20
MAX_HEADER_BYTES = 100 << 20
RETRIES = 20  # re-reads of a checkpoint that a writer replaced while it was being read

_DTYPES = {
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


# --- writing -------------------------------------------------------------------------------------


def _rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return meta, tensors


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    sd = optimizer.state_dict()
    tensors, layout = {}, {}
    for pid, state in sd["state"].items():
        layout[str(pid)] = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
                layout[str(pid)][key] = "tensor"
            else:
                layout[str(pid)][key] = value
    return {"param_groups": sd["param_groups"], "state": layout}, tensors


def _content_name(directory: Path, stem: str, write: Callable[[Path], None]) -> str:
    """Write via ``write(tmp_path)`` and rename to ``stem-<sha12>.safetensors``; return the name."""
    with atomic_path(directory / f"{stem}.pending") as tmp:
        try:
            write(tmp)
        except SafetensorError as err:  # safetensors' writer reports the OS's error in its own type
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1]))) from None
    pending = directory / f"{stem}.pending"
    name = f"{stem}-{sha256_file(pending)[:12]}.safetensors"
    os.replace(pending, directory / name)
    return name


def state_digest(state: dict[str, Any]) -> str:
    """sha256 of ``state`` without its own ``sha256`` field, over canonical JSON."""
    body = {k: v for k, v in state.items() if k != "sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8"))


def save_checkpoint(
    directory: str | Path,
    program: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    epoch: int,
    step: int,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Save the program's parameters and buffers, the optimizer and the RNG states atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng_meta, rng_tensors = _rng_state()
    files = {"weights": _content_name(directory, "weights", lambda p: save_model(program, str(p)))}
    optim_meta = None
    state_tensors = dict(rng_tensors)
    if optimizer is not None:
        optim_meta, optim_tensors = _optimizer_tensors(optimizer)
        state_tensors.update(optim_tensors)
    files["state"] = _content_name(directory, "optimizer", lambda p: p.write_bytes(save(state_tensors)))
    state = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "step": step,
        "config": config,
        "rng": rng_meta,
        "optimizer": optim_meta,
        "files": {role: {"name": name, "sha256": sha256_file(directory / name)} for role, name in files.items()},
        "extra": extra or {},
    }
    state["sha256"] = state_digest(state)
    write_json(directory / "state.json", state)
    keep = {f["name"] for f in state["files"].values()} | {"state.json"}
    for path in directory.iterdir():
        if path.name not in keep and not path.name.startswith("."):
            path.unlink()


# --- checking --------------------------------------------------------------------------------------


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
            and info.get("dtype") in _DTYPES
            and isinstance(info.get("shape"), list)
            and all(_is_int(s, 0) for s in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(_is_int(o, 0) for o in info["data_offsets"])
        )
        if ok:
            begin, end = info["data_offsets"]
            itemsize = torch.empty((), dtype=_DTYPES[info["dtype"]]).element_size()
            ok = begin <= end <= size and end - begin == math.prod(info["shape"]) * itemsize
        if not ok:
            raise CheckpointError(f"{file} has a corrupt safetensors header (tensor {name!r})")
    return {k: v for k, v in header.items() if k != "__metadata__"}


# --- reading ---------------------------------------------------------------------------------------


def _read_state_bytes(path: Path) -> bytes:
    try:
        with open_regular(path, "checkpoint state", CheckpointError) as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} is not a ppl_vae checkpoint (no state.json)") from None
    except (IsADirectoryError, NotADirectoryError):
        raise CheckpointError(f"{path.parent} is not a ppl_vae checkpoint") from None
    if len(data) > MAX_STATE_BYTES:
        raise CheckpointError(f"{path} is too large to be a checkpoint state")
    return data


def _parse_state(data: bytes, path: Path) -> dict[str, Any]:
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    return validate_state(state, path)


def read_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(state, {role: file bytes})`` of a consistent checkpoint, every digest and header checked.

    If a writer replaces the checkpoint while it is read (a file named by the ``state.json`` just
    read is gone), ``state.json`` is read again: a reader sees the old or the new checkpoint.
    """
    directory = Path(directory)
    path = directory / "state.json"
    for _ in range(RETRIES):
        raw = _read_state_bytes(path)
        state = _parse_state(raw, path)
        try:
            with contextlib.ExitStack() as stack:  # open every file first: once open, a removal cannot hurt
                handles = {
                    role: stack.enter_context(
                        open_regular(directory / entry["name"], f"checkpoint {role} file", CheckpointError)
                    )
                    for role, entry in state["files"].items()
                }
                contents = {role: f.read() for role, f in handles.items()}
        except FileNotFoundError as err:
            if _read_state_bytes(path) != raw:
                continue  # replaced meanwhile: read the new one
            raise CheckpointError(f"checkpoint file missing: {err.filename}") from None
        except IsADirectoryError as err:
            raise CheckpointError(f"checkpoint file {err.filename} is a directory") from None
        for role, data in contents.items():
            file = directory / state["files"][role]["name"]
            parse_header(data, file)
            if sha256_bytes(data) != state["files"][role]["sha256"]:
                raise CheckpointError(
                    f"{file} does not match the sha256 in state.json (corrupt or replaced); refusing to load"
                )
        return state, contents
    raise CheckpointError(f"{directory} keeps changing while it is read; is another process rewriting it?")


def read_state(directory: str | Path) -> dict[str, Any]:
    """Read and check ``state.json``: every field, and each file's sha256 and safetensors header."""
    return read_checkpoint(directory)[0]


def _describe(dtype: torch.dtype, shape) -> str:
    return f"{str(dtype).replace('torch.', '')} {list(shape)}"


def _check_tensors_fit(header: dict[str, Any], file: Path, program: nn.Module) -> None:
    """The file holds every tensor of the program (a tensor shared under two names once), each with its shape
    and dtype, and nothing else."""
    expected = program.state_dict()
    for key, info in header.items():
        if key not in expected:
            raise CheckpointError(
                f"{file}: weights do not fit the program the config describes: unexpected tensor {key!r}"
            )
        shape, dtype, want = tuple(info["shape"]), _DTYPES[info["dtype"]], expected[key]
        if shape != tuple(want.shape) or dtype != want.dtype:
            raise CheckpointError(
                f"{file}: weights do not fit the program the config describes: {key!r} is "
                f"{_describe(dtype, shape)}, expected {_describe(want.dtype, want.shape)}"
            )
    stored = {(expected[k].data_ptr(), tuple(expected[k].shape)) for k in header}
    missing = [
        k for k in expected if k not in header and (expected[k].data_ptr(), tuple(expected[k].shape)) not in stored
    ]
    if missing:
        raise CheckpointError(
            f"{file}: weights do not fit the program the config describes: no tensor {sorted(missing)[0]!r}"
        )


def _check_finite(tensors: dict[str, torch.Tensor], file: Path) -> None:
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{file}: tensor {key!r} holds NaN or infinite values; refusing to load it")


def _load_into(program: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (checked by :func:`_check_tensors_fit`) into ``program``."""
    program.load_state_dict(tensors, strict=False)


def _optimizer_template(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, Any]] | None:
    """What ``optimizer``'s state holds for each parameter after a step: ``{index: {key: (shape, dtype) or None}}``
    (``None``: a number). Found by one step of a twin optimizer on zero copies of the parameters; ``None`` where
    the optimizer cannot be built again from its own param groups (then only shapes are checked)."""
    clones, groups = [], []
    for group in optimizer.param_groups:
        params = [torch.zeros_like(p, requires_grad=True) for p in group["params"]]
        for p in params:
            p.grad = torch.zeros_like(p)
        clones += params
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
    try:
        twin = type(optimizer)(groups)
        twin.step()
    except Exception:  # noqa: BLE001 - an optimizer class whose constructor takes more than its param groups
        return None
    return {
        i: {k: (tuple(v.shape), v.dtype) if torch.is_tensor(v) else None for k, v in twin.state[p].items()}
        for i, p in enumerate(clones)
    }


def _check_optimizer_fit(
    meta: dict[str, Any], tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, directory: Path
) -> None:
    """The optimizer state fits ``optimizer``: its groups, and each entry's name, shape and dtype (and
    finiteness) as a step of this optimizer on these parameters would leave them. A tensor of another
    shape would be read out of bounds by a fused kernel, so this is checked before anything is loaded."""
    groups = optimizer.param_groups
    saved = meta["param_groups"]
    params = [p for g in groups for p in g["params"]]
    problem = None
    if [len(g["params"]) for g in saved] != [len(g["params"]) for g in groups]:
        problem = f"it holds {len(saved)} parameter groups of {[len(g['params']) for g in saved]} tensors"
    elif [p for g in saved for p in g["params"]] != list(range(len(params))):
        problem = "its parameter groups do not number the parameters in order"
    if problem:
        raise CheckpointError(f"{directory}: the optimizer state does not fit this program's optimizer: {problem}")
    template = _optimizer_template(optimizer)
    for pid, layout in meta["state"].items():
        param, want = params[int(pid)], None if template is None else template[int(pid)]
        if want is not None and set(layout) != set(want):
            raise CheckpointError(
                f"{directory}: the optimizer state of parameter {pid} holds {sorted(layout)}, expected {sorted(want)}"
            )
        for key, value in layout.items():
            if value != "tensor":
                if want is not None and want[key] is not None:
                    raise CheckpointError(f"{directory}: the optimizer state {pid}.{key} must be a tensor")
                continue
            tensor = tensors[f"optim.{pid}.{key}"]
            shape, dtype = tuple(tensor.shape), tensor.dtype
            if want is not None:
                if want[key] is None or want[key] != (shape, dtype):
                    expected = "a number" if want[key] is None else _describe(want[key][1], want[key][0])
                    got = _describe(dtype, shape)
                    raise CheckpointError(
                        f"{directory}: the optimizer tensor {pid}.{key} is {got}, expected {expected}"
                    )
            elif shape not in ((), tuple(param.shape)) or not (dtype.is_floating_point or shape == ()):
                raise CheckpointError(
                    f"{directory}: the optimizer tensor {pid}.{key} is {_describe(dtype, shape)}, "
                    f"expected a number or {_describe(param.dtype, param.shape)}"
                )
    _check_finite({k: v for k, v in tensors.items() if k.startswith("optim.")}, directory)


def _state_tensors(data: bytes, state: dict[str, Any], directory: Path) -> dict[str, torch.Tensor]:
    """The optimizer and RNG tensors, each one the state's layout names and nothing else."""
    tensors = load_tensors(data)
    wanted = {"rng.torch"} | {
        f"optim.{pid}.{key}"
        for pid, layout in ((state["optimizer"] or {}).get("state") or {}).items()
        for key, value in layout.items()
        if value == "tensor"
    }
    cuda = {k for k in tensors if k.startswith("rng.cuda.") and k[9:].isdigit()}
    if set(tensors) - cuda != wanted:
        odd = sorted((set(tensors) - cuda) ^ wanted)[:3]
        raise CheckpointError(f"{directory}: the state file does not match state.json (tensors {odd})")
    if tensors["rng.torch"].dtype != torch.uint8 or tensors["rng.torch"].shape != torch.get_rng_state().shape:
        raise CheckpointError(f"{directory}: the state file's torch RNG state is malformed")
    if any(tensors[k].dtype != torch.uint8 or tensors[k].dim() != 1 for k in cuda):
        raise CheckpointError(f"{directory}: the state file's CUDA RNG states are malformed")
    return tensors


def _set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def load_checkpoint(
    directory: str | Path,
    program: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = False,
    device: str = "cpu",
    checkpoint: tuple[dict[str, Any], dict[str, bytes]] | None = None,
) -> dict[str, Any]:
    """Load weights (and optionally optimizer and RNG states) into ``program``; return the state.

    ``checkpoint`` is what :func:`read_checkpoint` returned, when the caller has read it already.
    """
    directory = Path(directory)
    state, contents = checkpoint or read_checkpoint(directory)
    weights_file = directory / state["files"]["weights"]["name"]
    _check_tensors_fit(parse_header(contents["weights"], weights_file), weights_file, program)
    try:
        weights = load_tensors(contents["weights"])
        tensors = _state_tensors(contents["state"], state, directory)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for malformed files
        raise CheckpointError(f"{directory}: unreadable safetensors file: {err}") from None
    _check_finite(weights, weights_file)
    meta = state["optimizer"] if optimizer is not None else None
    if meta:
        _check_optimizer_fit(meta, tensors, optimizer, directory)
    # every tensor has been checked: nothing is copied before this line
    _load_into(program, {k: v.to(device) for k, v in weights.items()})
    if meta:
        restored = {
            int(pid): {
                key: (tensors[f"optim.{pid}.{key}"].to(device) if value == "tensor" else value)
                for key, value in layout.items()
            }
            for pid, layout in meta["state"].items()
        }
        try:
            optimizer.load_state_dict({"state": restored, "param_groups": meta["param_groups"]})
        except (ValueError, KeyError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"{directory}: optimizer state does not fit: {err}") from None
    if restore_rng:
        try:
            _set_rng_state(state["rng"], tensors)
        except (ValueError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{directory}: the RNG states cannot be restored: {err}") from None
    return state
