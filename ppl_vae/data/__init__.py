"""Data sets: loaders, validation, splits, and rows streamed from ``.npy`` files.

Layer 1 — may import: numpy, torch, scikit-learn/scipy/torchvision (lazily, per loader),
``ppl_vae.errors``, ``ppl_vae.storage`` (to open only regular files).
"""

from .datasets import DATASETS, Dataset, load_data, shared_data_dir, validate_array
from .rowfile import RowFile, as_tensor

__all__ = ["Dataset", "load_data", "validate_array", "DATASETS", "shared_data_dir", "RowFile", "as_tensor"]
