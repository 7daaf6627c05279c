"""Early stopping on the validation ELBO: the rule, the weights a run keeps, and resuming a stopped run."""

import pytest
import torch

import ppl_vae
from ppl_vae.errors import UserError
from ppl_vae.inference import trainer as trainer_module
from ppl_vae.inference.trainer import Trainer
from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config


def _trainer(digits, **train):
    config = tiny_config(train=train)
    program = build_program(config, 64, (8, 8))
    return Trainer(program, config.train, digits.train, digits.test, val=digits.test)


@pytest.mark.parametrize(
    "scores,train,best,stop",
    [
        ([-5.0, -4.0, -4.5, -4.6], {"patience": 2}, 2, True),  # two epochs without a better one
        ([-5.0, -4.0, -4.5], {"patience": 2}, 2, False),
        ([-5.0, -4.0, -4.5, -4.6], {"patience": 2, "anneal": "linear", "anneal_epochs": 3}, 2, False),  # counts after
        ([-5.0, -4.0, -4.0, -4.0], {"patience": 2}, 2, True),  # a tie is no improvement
        ([-5.0, -4.0, -4.5, -4.6], {"patience": 0}, 2, False),  # off
        ([-5.0, -4.0, -4.5, -4.6], {"patience": 2, "min_epochs": 5}, 2, False),  # never before min_epochs
        ([-5.0, -4.0, -4.5, -4.6, -4.7], {"patience": 2, "min_epochs": 5}, 2, True),  # from min_epochs on
        # the VampPrior paper's protocol: warm-up 3, patience 2, min 6 — after the warm-up, not before epoch 6
        (
            [-5.0, -4.0, -4.5, -4.6, -4.7],
            {"patience": 2, "anneal": "linear", "anneal_epochs": 3, "min_epochs": 6},
            2,
            False,
        ),
        (
            [-5, -4, -4.5, -4.6, -4.7, -4.8],
            {"patience": 2, "anneal": "linear", "anneal_epochs": 3, "min_epochs": 6},
            2,
            True,
        ),
    ],
)
def test_the_stopping_rule_reads_the_history(digits, scores, train, best, stop):
    t = _trainer(digits, **train)
    t.history = [{"epoch": i + 1, "val_elbo": s} for i, s in enumerate(scores)]
    t.epoch = len(scores)
    assert t.best_epoch() == best and t.stopped_early() is stop


def _scripted_val_elbo(monkeypatch, scores):
    """Replace the per-epoch ELBO by a script for the validation split (it draws nothing from the RNG)."""
    calls = iter(scores)

    def elbo(program, x, batch_size=1024, num_particles=1, nesting=None):
        value = next(calls) if len(x) == 200 else -1.0
        return torch.full((len(x),), value)

    monkeypatch.setattr(trainer_module, "elbo_per_datapoint", elbo)


def test_a_stopped_run_keeps_its_best_epoch_and_resumes_stopped(monkeypatch, tmp_path):
    """Validation ELBO -10, -5, -6: with patience 1 training stops after epoch 3 with epoch 2's weights."""
    data = {"validation": 200}
    _scripted_val_elbo(monkeypatch, [-10.0, -5.0, -6.0, -7.0])
    run = ppl_vae.fit(tiny_config(data=data, train={"epochs": 10, "patience": 1}), tmp_path / "a", progress=False)
    assert len(run.history) == 3 and run.metrics["best_epoch"] == 2 and run.metrics["best_val_elbo"] == -5.0
    _scripted_val_elbo(monkeypatch, [-10.0, -5.0])
    two = ppl_vae.fit(tiny_config(data=data, train={"epochs": 2}), tmp_path / "b", progress=False)
    for (name, p), q in zip(ppl_vae.load(tmp_path / "a").program.named_parameters(), two.program.parameters()):
        assert torch.equal(p, q), name
    resumed = ppl_vae.fit(None, tmp_path / "a", resume=True, progress=False)
    assert len(resumed.history) == 3  # the rule reads the history: nothing more to train


def test_patience_needs_a_validation_split(tmp_path):
    with pytest.raises(UserError, match="validation split"):
        ppl_vae.fit(tiny_config(train={"patience": 3}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
