"""Pickle-free checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint is a directory::

    checkpoint/
      state.json                       # format tag, epoch, config, RNG states, sha256 of each file
      weights-<sha12>.safetensors      # every parameter and buffer of the program
      optimizer-<sha12>.safetensors    # optimizer tensors and the torch RNG state

``state.json`` is the commit point: tensor files are written first under names derived
from their content, then ``state.json`` is replaced atomically, then files it no longer
names are removed. A crash at any moment leaves the previous or the new checkpoint,
never a mix. Loading verifies the format tag, each file's sha256 and safetensors header,
and the shapes against the program; nothing is unpickled, so loading runs no code.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save, save_model
from torch import nn

from ..errors import CheckpointError
from .atomic import atomic_path, sha256_file, write_json

__all__ = ["save_checkpoint", "load_checkpoint", "read_state", "FORMAT"]

FORMAT = "ppl_vae-checkpoint"
VERSION = 1
MAX_STATE_BYTES = 16 << 20
MAX_HEADER_BYTES = 100 << 20


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


def _set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


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


def _save_tensors(tmp: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp.write_bytes(save(tensors))


def _content_name(directory: Path, stem: str, write) -> str:
    """Write via ``write(tmp_path)`` and rename to ``stem-<sha12>.safetensors``; return the name."""
    with atomic_path(directory / f"{stem}.pending") as tmp:
        write(tmp)
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
    files["state"] = _content_name(directory, "optimizer", lambda p: _save_tensors(p, state_tensors))
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
    write_json(directory / "state.json", state)
    keep = {f["name"] for f in state["files"].values()} | {"state.json"}
    for path in directory.iterdir():
        if path.name not in keep and not path.name.startswith("."):
            path.unlink()


def read_state(directory: str | Path) -> dict[str, Any]:
    """Read and check ``state.json``: the format tag and each file's name, sha256 and header."""
    directory = Path(directory)
    path = directory / "state.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a ppl_vae checkpoint (no state.json)")
    if path.stat().st_size > MAX_STATE_BYTES:
        raise CheckpointError(f"{path} is too large to be a checkpoint state")
    try:
        state = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ppl_vae checkpoint (format tag missing or foreign)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')!r}; this ppl_vae reads {VERSION}")
    files = state.get("files")
    if not isinstance(files, dict) or set(files) != {"weights", "state"}:
        raise CheckpointError(f"{path} does not list the weights and state files")
    for role, entry in files.items():
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            raise CheckpointError(
                f"{path}: the {role} file must be a .safetensors file in the checkpoint, got {name!r}"
            )
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file missing: {file}")
        _check_safetensors_header(file)
        if sha256_file(file) != entry.get("sha256"):
            raise CheckpointError(
                f"{file} does not match the sha256 in state.json (corrupt or replaced); refusing to load"
            )
    return state


def _check_safetensors_header(file: Path) -> None:
    with open(file, "rb") as f:
        head = f.read(9)
    # the layout first: a safetensors header length whose low byte is 0x80 looks like a pickle's first opcode
    if len(head) < 9 or head[8:9] != b"{":
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise CheckpointError(f"{file} is a pickle/zip file, not safetensors; refusing to load it")
        raise CheckpointError(f"{file} is not a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES or n + 8 > file.stat().st_size:
        raise CheckpointError(f"{file} has a corrupt safetensors header")


def _check_tensors_fit(file: Path, program: nn.Module) -> None:
    """Every tensor in the file must exist in the program with the same shape and dtype."""
    expected = program.state_dict()
    try:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key not in expected:
                    raise CheckpointError(
                        f"{file}: weights do not fit the program the config describes: unexpected tensor {key!r}"
                    )
                info = f.get_slice(key)
                shape, dtype = tuple(info.get_shape()), _DTYPES.get(info.get_dtype())
                want = expected[key]
                if shape != tuple(want.shape) or dtype != want.dtype:
                    raise CheckpointError(
                        f"{file}: weights do not fit the program the config describes: {key!r} is "
                        f"{str(dtype).replace('torch.', '')} {list(shape)}, "
                        f"expected {str(want.dtype).replace('torch.', '')} {list(want.shape)}"
                    )
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors' own error types for malformed headers
        raise CheckpointError(f"{file}: unreadable safetensors file: {err}") from None


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


def load_checkpoint(
    directory: str | Path,
    program: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Load weights (and optionally optimizer and RNG states) into ``program``; return the state."""
    directory = Path(directory)
    state = read_state(directory)
    _check_tensors_fit(directory / state["files"]["weights"]["name"], program)
    try:
        missing, unexpected = load_model(
            program, str(directory / state["files"]["weights"]["name"]), strict=False, device=device
        )
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{directory}: weights do not fit the program described by the config: {err}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not fit the program "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    try:
        tensors = load_file(str(directory / state["files"]["state"]["name"]))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type
        raise CheckpointError(f"{directory}: cannot read the state file: {err}") from None
    if optimizer is not None and state.get("optimizer"):
        meta = state["optimizer"]
        restored = {}
        for pid, layout in meta["state"].items():
            restored[int(pid)] = {
                key: (tensors[f"optim.{pid}.{key}"].to(device) if value == "tensor" else value)
                for key, value in layout.items()
            }
        try:
            optimizer.load_state_dict({"state": restored, "param_groups": meta["param_groups"]})
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{directory}: optimizer state does not fit: {err}") from None
    if restore_rng:
        _set_rng_state(state["rng"], tensors)
    return state
