"""Probabilistic PCA, whose posterior and log p(x) are known exactly, and 40 points drawn from it."""

import pytest
import torch

from tests.ppl_vae.linear_gaussian import make


@pytest.fixture
def ppca():
    return make()


@pytest.fixture
def x(ppca):
    return ppca.sample(40, torch.Generator().manual_seed(1))
