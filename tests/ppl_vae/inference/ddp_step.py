"""One data-parallel optimisation step, run by the DDP test under torchrun; rank 0 saves the weights."""

import sys

import pyro
import torch
from safetensors.torch import save_file

from ppl_vae.config import Config, DataConfig
from ppl_vae.data.datasets import load_data
from ppl_vae.inference.distributed import init_cluster
from ppl_vae.inference.trainer import Trainer
from ppl_vae.runs.build import build_program


def config() -> Config:
    c = Config()
    c.model.hidden_dim, c.train.batch_size, c.train.epochs = 32, 64, 1
    return c.validate()


def data():
    d = load_data(DataConfig())
    return d.train[:64], d.test[:8]  # one global batch of 64 rows


if __name__ == "__main__":
    train, test = data()
    pyro.set_rng_seed(0)
    program = build_program(config(), 64, (8, 8))
    cluster = init_cluster(torch.device("cpu"))
    pyro.set_rng_seed(cluster.rank)
    Trainer(program, config().train, train, test, progress=False, cluster=cluster).run_epoch()
    if cluster.is_main:
        save_file({k: v.contiguous() for k, v in program.state_dict().items()}, sys.argv[1])
    torch.distributed.destroy_process_group()
