"""DDP with torchrun on CPU (gloo): one step equals the single-process step on the union batch."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from safetensors.torch import load_file

from ppl_vae.inference.objectives import Objective
from ppl_vae.inference.trainer import epoch_permutation
from ppl_vae.runs.build import build_program
from tests.ppl_vae.inference.ddp_step import config, data

TORCHRUN = Path(sys.executable).parent / "torchrun"
HERE = Path(__file__).resolve().parent


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python"),
    # torchrun's rendezvous advertises this machine's host name and binds localhost
    pytest.mark.skipif(
        not (_resolves("localhost") and _resolves(socket.gethostname())),
        reason="this machine cannot resolve localhost or its own host name (no /etc/hosts), which torchrun needs",
    ),
]


def torchrun(*args, cwd):
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_one_ddp_step_equals_the_union_batch_step(tmp_path):
    out = tmp_path / "ddp.safetensors"
    torchrun(str(HERE / "ddp_step.py"), str(out), cwd=HERE.parents[2])
    ddp = load_file(str(out))

    train, _ = data()
    pyro.set_rng_seed(0)
    program = build_program(config(), 64, (8, 8))
    optimizer = torch.optim.Adam(program.parameters(), lr=config().train.lr)
    objective = Objective("trace")
    (batch,) = epoch_permutation(len(train), config().train.seed, 0).split(64)
    loss = 0.0
    for rank, shard in enumerate(batch.tensor_split(2)):  # the union batch, each row with its rank's noise
        pyro.set_rng_seed(rank)
        loss = loss + objective(program.model, program.guide, train[shard], scale=len(train) / len(batch))
    loss.backward()
    optimizer.step()
    for name, value in program.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=0, atol=1e-6, msg=name)
    pyro.set_rng_seed(0)
    initial = build_program(config(), 64, (8, 8)).state_dict()
    assert any(not torch.equal(ddp[n], v) for n, v in initial.items() if v.is_floating_point()), (
        "the step moved the weights"
    )


def test_two_process_training_has_the_single_process_elbo_scale(tmp_path):
    args = ["-m", "ppl_vae", "fit", "--epochs", "3", "--hidden-dim", "32", "--no-progress"]
    torchrun(*args, "--distributed", "--out", str(tmp_path / "ddp"), cwd=tmp_path)
    subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one")], cwd=tmp_path, check=True, capture_output=True
    )
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert ddp["n_train"] == one["n_train"]
    # per-datapoint numbers on the same scale (different noise, the same optimisation budget)
    assert abs(ddp["train_objective"] - one["train_objective"]) < 0.1 * abs(one["train_objective"])
    assert abs(ddp["test_elbo"] - one["test_elbo"]) < 0.1 * abs(one["test_elbo"])
