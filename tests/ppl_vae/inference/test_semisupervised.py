"""Labels: a seeded, balanced labelled subset; labelled and unlabelled batches, scaled so a step is unbiased."""

import numpy as np
import pytest
import torch

import ppl_vae
from ppl_vae.config import DataConfig, from_dict
from ppl_vae.data.datasets import labelled_subset, load_data
from ppl_vae.errors import UserError
from ppl_vae.inference.trainer import Trainer, epoch_batches, epoch_permutation
from tests.conftest import tiny_config
from tests.ppl_vae.mixtures import MixturePPCA, MixtureVAE


def test_without_labels_the_batches_are_the_epoch_permutation_sliced():
    batches = epoch_batches(100, 32, seed=3, epoch=2)
    expected = epoch_permutation(100, 3, 2).split(32)
    assert len(batches) == len(expected)
    for (idx, labelled), want in zip(batches, expected):
        assert torch.equal(idx, want) and not labelled


def test_labelled_and_unlabelled_batches_cover_every_point_once_interleaved():
    n, b = 1000, 50
    labelled = torch.zeros(n, dtype=torch.bool)
    labelled[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:120]] = True
    batches = epoch_batches(n, b, seed=1, epoch=0, labelled=labelled)
    seen = torch.cat([idx for idx, _ in batches])
    assert torch.equal(seen.sort().values, torch.arange(n))  # every point once an epoch
    assert all(bool((labelled[idx] == kind).all()) for idx, kind in batches)  # no batch mixes the two kinds
    kinds = [kind for _, kind in batches]
    assert sum(kinds) == 3 and len(kinds) - sum(kinds) == 18  # ceil(120/50), ceil(880/50)
    positions = np.flatnonzero(kinds) / len(kinds)  # spread over the epoch, not bunched at one end
    assert positions.min() < 0.25 and positions.max() > 0.75
    again = epoch_batches(n, b, seed=1, epoch=0, labelled=labelled)
    assert all(torch.equal(a, c) and k == m for (a, k), (c, m) in zip(batches, again))
    other = epoch_batches(n, b, seed=1, epoch=1, labelled=labelled)
    assert not torch.equal(batches[0][0], other[0][0])


def test_labels_reach_only_labelled_batches_with_their_scale():
    """A labelled batch gets y = its labels and scale (M/M_l)·N_l/B; an unlabelled one y=None and (M/M_u)·N_u/B."""
    x, y = MixturePPCA(seed=1).sample(300, torch.Generator().manual_seed(0))
    labels = torch.full((300,), -1, dtype=torch.int64)
    keep = torch.arange(0, 300, 5)  # 60 labelled points
    labels[keep] = y[keep]
    config = tiny_config(train={"epochs": 1, "batch_size": 32, "elbo": "traceenum"})
    trainer = Trainer(MixtureVAE().float(), config.train, x.float(), x[:10].float(), labels=labels, progress=False)
    calls = []
    step = trainer._loss_and_grads
    trainer._loss_and_grads = lambda xb, scale, beta, inputs: (
        calls.append((xb, scale, inputs)) or step(xb, scale, beta, inputs)
    )
    expected = trainer.batches()
    trainer.fit()
    assert len(calls) == len(expected) == 2 + 8  # ceil(60/32) labelled, ceil(240/32) unlabelled
    for (xb, scale, inputs), (idx, labelled) in zip(calls, expected):
        assert torch.equal(xb, x.float()[idx])
        if labelled:
            assert torch.equal(inputs["y"], y[idx]) and scale == pytest.approx(10 / 2 * 60 / len(idx))
        else:
            assert inputs == {"y": None} and scale == pytest.approx(10 / 8 * 240 / len(idx))
    # a step at a batch drawn uniformly from the epoch's 10 is unbiased for the whole objective: with a loss of
    # a on every labelled point and b on every unlabelled one, the steps' mean is 60a + 240b
    a, b = 3.0, -7.0
    mean = sum(scale * len(xb) * (a if inputs["y"] is not None else b) for xb, scale, inputs in calls) / len(calls)
    assert mean == pytest.approx(60 * a + 240 * b)
    # each point is counted once per epoch in the reported per-datapoint objective
    assert sum(len(xb) for xb, _, _ in calls) == 300


def test_labelled_subset_is_balanced_over_classes_and_seeded(digits):
    picked = labelled_subset(digits.train_labels, "300", seed=0)
    assert len(picked) == 300 == len(np.unique(picked))
    assert np.bincount(digits.train_labels[picked]).tolist() == [30] * 10
    assert np.array_equal(picked, labelled_subset(digits.train_labels, "300", seed=0))
    assert not np.array_equal(picked, labelled_subset(digits.train_labels, "300", seed=1))
    assert len(labelled_subset(digits.train_labels, "all", seed=0)) == len(digits.train_labels)
    uneven = np.array([0] * 5 + [1] * 100 + [2] * 100)
    counts = np.bincount(uneven[labelled_subset(uneven, "62", seed=0)])
    assert counts[0] == 5 and sorted(counts[1:]) == [28, 29]  # a small class gives all it has, the rest share


def test_load_data_keeps_the_labels_asked_for(tmp_path):
    data = load_data(DataConfig(labels="300"))
    y = data.label_tensor()
    assert int((y >= 0).sum()) == 300 and torch.equal(y[y >= 0], torch.from_numpy(data.train_labels)[y >= 0])
    assert data.num_classes == 10
    with pytest.raises(UserError, match="more labelled points than the 1438"):
        load_data(DataConfig(labels="5000"))
    np.save(tmp_path / "x.npy", np.random.rand(30, 4).astype(np.float32))
    with pytest.raises(UserError, match="has no labels"):
        load_data(DataConfig(name=str(tmp_path / "x.npy"), labels="10"))


@pytest.mark.parametrize("value,stored", [(300, "300"), ("all", "all"), ("12", "12")])
def test_labels_option_takes_a_count_or_all(value, stored):
    assert from_dict({"data": {"labels": value}}).validate().data.labels == stored


@pytest.mark.parametrize("value", [-3, "many", "1.5", True])
def test_labels_option_refuses_anything_else(value):
    with pytest.raises(UserError, match="labels"):
        from_dict({"data": {"labels": value}}).validate()


def test_labels_for_a_program_that_takes_no_y_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match="take no input y, so labels would be ignored"):
        ppl_vae.fit(tiny_config(data={"labels": "100"}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
