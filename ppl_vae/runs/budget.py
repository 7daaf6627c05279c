"""Memory a request needs, estimated before any work starts, against what the machine has.

A request too large for the machine (``--particles 1000000``, ``--k 10000000`` with many
test points, a batch of a million wide rows) is refused in one line with the estimate and the
memory available, instead of being killed by the kernel's out-of-memory killer an hour in.

The estimates count the tensors that must coexist, in float32 (float64 where the code keeps
float64), and leave out what is small; they are lower bounds of the real peak, so a request
that is refused could not have run, and one that passes may still be tight.
"""

from __future__ import annotations

import os

import torch

from ..config import Config, EvalConfig
from ..diagnostics.estimators import ROWS_PER_CHUNK
from ..errors import UserError

__all__ = ["available_bytes", "training_bytes", "evaluation_bytes", "check_memory", "human"]

FLOAT = 4
DOUBLE = 8


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def available_bytes(device: torch.device) -> int:
    """Memory free for this process on ``device``: CUDA's free memory, or the kernel's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _row_width(config: Config, data_dim: int) -> int:
    """Floats one (particle, datapoint) row holds through encoder, decoder and likelihood."""
    m, g = config.model, config.guide
    hidden = 2 * m.hidden_dim * m.hidden_layers  # encoder and decoder
    latent = m.latent_dim * (4 + 2 * g.flows + 2 * m.flows)
    return hidden + 3 * data_dim + latent


def training_bytes(config: Config, data_dim: int, n_train: int, in_memory: bool = True) -> int:
    """One training step: K particles × batch rows of activations kept for the backward pass,
    the parameters with their gradients and Adam's two moments, and the data set on the device."""
    t, m = config.train, config.model
    batch = min(t.batch_size, n_train)
    activations = 2 * t.particles * batch * _row_width(config, data_dim) * FLOAT
    params = (2 * (data_dim + m.latent_dim) * m.hidden_dim + (m.hidden_layers - 1) * m.hidden_dim**2) * FLOAT * 4
    data = n_train * data_dim * FLOAT if in_memory else 0
    return activations + params + data


def evaluation_bytes(workflow: EvalConfig, config: Config, n_points: int, data_dim: int) -> int:
    """``evaluate``: the N × K log-weights (float64; N × S × K with global latents) kept to the end, plus the
    largest phase on top: importance chunks, the gaps' second set of weights, SBC's draws, the InferenceData export."""
    n = min(workflow.points or n_points, n_points)
    latent = config.model.latent_dim
    # a Bayesian decoder keeps K weights for each of its --global-draws draws θ ~ q(θ) (a user program's
    # global sites are not known before it is traced: counted as one draw)
    draws = workflow.global_draws if config.model.decoder_prior != "none" else 1
    log_w = n * workflow.k * draws * DOUBLE
    chunk = ROWS_PER_CHUNK * _row_width(config, data_dim) * FLOAT
    gaps = min(workflow.gap_points, n) * workflow.k * DOUBLE * 2
    sbc = workflow.sbc_simulations * (workflow.sbc_draws * latent * (2 + config.guide.flows) + data_dim) * FLOAT
    idata = min(workflow.idata_points, n) * workflow.idata_draws * (3 * data_dim + latent) * DOUBLE
    return log_w + max(chunk, gaps, sbc, idata)


def check_memory(what: str, needed: int, device: torch.device, advice: str) -> None:
    """Refuse (one line, with the estimate) a request needing more than ``device`` has free."""
    have = available_bytes(device)
    if needed > have:
        raise UserError(
            f"{what} needs at least {human(needed)} of memory, more than the {human(have)} available "
            f"on {device.type}; {advice}"
        )
