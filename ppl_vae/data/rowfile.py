"""Rows of a ``.npy`` file read on demand, for data larger than memory.

``RowFile(path)[idx]`` reads just the rows ``idx`` with positioned reads (``os.pread``), so the
file is never loaded whole and its pages are never mapped into the process (memory-mapped
pages would count towards its resident memory as an epoch touches them). The training loop
only needs ``len``, indexing by an index tensor and ``split``; everything else materialises
a small part (figures, the evaluation's test points).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..storage.atomic import open_regular

__all__ = ["RowFile", "as_tensor"]

SCAN_ROWS_BYTES = 64 << 20  # validation reads the file in pieces of this size


class RowFile:
    """A view of selected rows of a C-ordered ``.npy`` array ``(N, ...)`` as float32 ``(n, D)``."""

    def __init__(self, path: str | Path, rows: np.ndarray | None = None, device: torch.device | str = "cpu"):
        self.path = Path(path)
        with open_regular(self.path, "data file") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f, max_header_size=1 << 16)
            except (ValueError, OSError) as err:
                raise UserError(f"{self.path}: not a .npy array: {err}") from None
            self.offset = f.tell()
        if fortran:
            raise UserError(f"{self.path}: a Fortran-ordered array cannot be streamed by rows; save it C-ordered")
        if (
            dtype.hasobject
            or not (np.issubdtype(dtype, np.number) or dtype.kind == "b")
            or np.issubdtype(dtype, np.complexfloating)
        ):
            raise UserError(f"{self.path}: expected a real numeric array, got dtype {dtype}")
        if any(s < 0 for s in shape):
            raise UserError(f"{self.path}: its header gives the shape {shape}, which no array has; the file is corrupt")
        if len(shape) < 2:
            raise UserError(f"{self.path}: expected an array of shape (N, D) or (N, H, W), got shape {shape}")
        if shape[0] == 0 or int(np.prod(shape[1:])) == 0:
            raise UserError(f"{self.path}: the array is empty (shape {shape})")
        if os.path.getsize(self.path) < self.offset + int(np.prod(shape)) * dtype.itemsize:
            raise UserError(f"{self.path}: the file is shorter than its header says (truncated?)")
        self.file_shape, self.dtype = tuple(shape), dtype
        self.row_shape = tuple(shape[1:])
        self.data_dim = int(np.prod(self.row_shape))
        self.row_bytes = self.data_dim * dtype.itemsize
        self.rows = np.arange(shape[0]) if rows is None else np.asarray(rows)
        self.device = torch.device(device)

    # --- the tensor-like surface the training loop uses ---------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), self.data_dim)

    def subset(self, positions) -> RowFile:
        """The rows at ``positions`` of this view (no data is read)."""
        new = object.__new__(RowFile)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_range"})
        new.rows = np.atleast_1d(self.rows[positions])
        return new

    def to(self, device) -> RowFile:
        """The same rows, delivered on ``device`` batch by batch."""
        new = self.subset(slice(None))
        new.device = torch.device(device)
        return new

    def __getitem__(self, index) -> torch.Tensor:
        if torch.is_tensor(index):
            index = index.cpu().numpy()
        picked = np.atleast_1d(self.rows[index])
        return self._read(picked).to(self.device)

    def split(self, size: int):
        for start in range(0, len(self.rows), size):
            yield self[slice(start, start + size)]

    def min(self) -> float:
        return self._scan()[0]

    def max(self) -> float:
        return self._scan()[1]

    # --- reading ----------------------------------------------------------------------
    def _read(self, rows: np.ndarray) -> torch.Tensor:
        buf = bytearray(len(rows) * self.row_bytes)
        view = memoryview(buf)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            order = np.argsort(rows, kind="stable")  # ascending offsets read faster
            for j in order:
                start = self.offset + int(rows[j]) * self.row_bytes
                got = os.preadv(fd, [view[j * self.row_bytes : (j + 1) * self.row_bytes]], start)
                if got != self.row_bytes:
                    raise UserError(f"{self.path}: short read at row {rows[j]} (file changed or truncated?)")
        finally:
            os.close(fd)
        x = np.frombuffer(buf, dtype=self.dtype).reshape(len(rows), self.data_dim)
        return torch.from_numpy(_to_float(x))

    def _scan(self) -> tuple[float, float]:
        """(min, max) over the selected rows, reading the file in pieces; validates finiteness."""
        if not hasattr(self, "_range"):
            lo, hi = np.inf, -np.inf
            step = max(1, SCAN_ROWS_BYTES // self.row_bytes)
            for start in range(0, len(self.rows), step):
                x = self._read(self.rows[start : start + step]).numpy()
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
            self._range = (lo, hi)
        return self._range

    def validate(self, name: str) -> RowFile:
        """Refuse NaN, inf and values beyond float32, reading the file once in pieces."""
        step = max(1, SCAN_ROWS_BYTES // self.row_bytes)
        for start in range(0, len(self.rows), step):
            raw = self._raw(self.rows[start : start + step])
            if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                bad = np.flatnonzero(~np.isfinite(raw).all(axis=1))  # rows of this piece, in order
                rows = self.rows[start + bad]
                more = f" and {len(rows) - 1} more in rows {rows.min()}..{rows.max()}" if len(rows) > 1 else ""
                raise UserError(
                    f"{name}: values are NaN or infinite in row {rows[0]}{more} (of rows 0..{self.file_shape[0] - 1}); "
                    "clean the data first"
                )
            with np.errstate(over="ignore"):
                if not np.isfinite(_to_float(raw)).all():
                    raise UserError(f"{name}: values beyond the float32 range; rescale the data first")
        return self

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        with open(self.path, "rb") as f:  # contiguous rows of a scan: one read
            f.seek(self.offset + int(rows[0]) * self.row_bytes)
            if np.all(np.diff(rows) == 1):
                return np.frombuffer(f.read(len(rows) * self.row_bytes), dtype=self.dtype).reshape(len(rows), -1)
        return self._read(rows).numpy()

    def materialize(self) -> torch.Tensor:
        return self[slice(None)]


def _to_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def as_tensor(x) -> torch.Tensor:
    """``x`` itself if it is a tensor, else its rows read into one (the small splits only)."""
    return x if torch.is_tensor(x) else x.materialize()
