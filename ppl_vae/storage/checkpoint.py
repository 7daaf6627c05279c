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
Nothing is unpickled, so loading runs no code. What each file must hold, and the checks of its
fields and headers, is :mod:`ppl_vae.storage.checkpoint_format`'s; this module writes and reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
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
from .checkpoint_format import DTYPES, FORMAT, VERSION, parse_header, state_digest, validate_state

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_state",
    "read_checkpoint",
    "state_digest",
    "parse_header",
    "FORMAT",
]

MAX_STATE_BYTES = 16 << 20
RETRIES = 20  # re-reads of a checkpoint that a writer replaced while it was being read


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
        shape, dtype, want = tuple(info["shape"]), DTYPES[info["dtype"]], expected[key]
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
