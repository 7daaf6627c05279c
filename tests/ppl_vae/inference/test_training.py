"""Training: it learns, it is reproducible, minibatches are scaled to the data set."""

import json

import pyro
import pytest
import torch

import ppl_vae
from ppl_vae.inference.objectives import Objective
from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config


def test_test_elbo_improves_by_a_wide_margin(tmp_path):
    config = tiny_config(train={"epochs": 15}, model={"hidden_dim": 128})
    run = ppl_vae.fit(config, tmp_path / "run", progress=False)
    first, last = run.history[0]["test_elbo"], run.history[-1]["test_elbo"]
    # digits, σ = 0.1: the first epoch sits near -200 nats, a trained model well above 0
    assert last > first + 100, (first, last)
    assert run.metrics["test_elbo"] == last and run.metrics["first_epoch_test_elbo"] == first


def test_same_seed_same_metrics(tmp_path):
    config = tiny_config(train={"epochs": 2})
    a = ppl_vae.fit(config, tmp_path / "a", progress=False)
    b = ppl_vae.fit(config, tmp_path / "b", progress=False)
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    ma.pop("seconds"), mb.pop("seconds")  # wall-clock time is the one number that may differ
    assert ma == mb
    for p, q in zip(a.program.parameters(), b.program.parameters()):
        assert torch.equal(p, q)
    c = ppl_vae.fit(tiny_config(train={"epochs": 2, "seed": 1}), tmp_path / "c", progress=False)
    assert c.metrics["train_objective"] != a.metrics["train_objective"]


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_minibatch_loss_is_scaled_to_the_data_set(elbo):
    """The loss of a minibatch of B from N rows is N/B times its plain ELBO sum (same draws)."""
    program = build_program(tiny_config(), 64, (8, 8))
    x = torch.rand(20, 64)
    objective = Objective(elbo, particles=3)
    objective(program.model, program.guide, x)  # the first call traces once to learn the plate nesting
    pyro.set_rng_seed(5)
    plain = objective(program.model, program.guide, x, scale=1.0)
    pyro.set_rng_seed(5)
    scaled = objective(program.model, program.guide, x, scale=1797 / 20)
    torch.testing.assert_close(scaled, plain * 1797 / 20)


@pytest.mark.parametrize(
    "anneal,expected", [("none", [1.0, 1.0, 1.0]), ("linear", [0.0, 0.5, 1.0]), ("cyclical", [0.0, 1.0, 0.0])]
)
def test_beta_schedules(anneal, expected):
    from ppl_vae.inference.schedules import ANNEALING

    assert [ANNEALING[anneal](1.0, e, 4) for e in (0, 2, 4)] == expected


def test_cosine_learning_rate_reaches_lr_final_and_resumes_from_the_counters(digits):
    from ppl_vae.inference.schedules import LR_SCHEDULES
    from ppl_vae.inference.trainer import Trainer

    cosine = LR_SCHEDULES["cosine"]
    assert cosine(1e-3, 1e-5, 0.0) == pytest.approx(1e-3)
    assert cosine(1e-3, 1e-5, 0.5) == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert cosine(1e-3, 1e-5, 1.0) == pytest.approx(1e-5)
    assert cosine(1e-3, 1e-5, 0.3) > cosine(1e-3, 1e-5, 0.7)
    config = tiny_config(train={"epochs": 2, "batch_size": 100, "lr_schedule": "cosine", "lr_final": 1e-5})
    program = build_program(config, 64, (8, 8))
    trainer = Trainer(program, config.train, digits.train[:400], digits.test[:10], progress=False)
    trainer.fit()
    # the last step of 2 epochs of 4 batches starts at epoch fraction 1 + 3/4
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cosine(1e-3, 1e-5, 1.75 / 2))


@pytest.mark.parametrize(
    "train,message",
    [({"lr_final": 0.1}, "lr_final must lie in"), ({"lr_schedule": "step"}, "unknown learning-rate schedule")],
)
def test_bad_learning_rate_schedules_are_refused(digits, train, message):
    from ppl_vae.errors import UserError
    from ppl_vae.inference.trainer import Trainer

    with pytest.raises(UserError, match=message):
        config = tiny_config(train=train)
        Trainer(build_program(config, 64, (8, 8)), config.train, digits.train[:40], digits.test[:10], progress=False)


def test_progress_bars_are_closed_when_training_diverges(digits, monkeypatch):
    """Every bar the trainer opens is closed, also when the loss becomes NaN mid-epoch."""
    from ppl_vae.errors import UserError
    from ppl_vae.inference import trainer as trainer_module

    opened = []

    class Bar:
        def __init__(self, iterable=None, **kwargs):
            assert iterable is None and "total" in kwargs  # the trainer's bars count, they do not iterate
            self.closed = False
            opened.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def update(self, *args):
            pass

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(trainer_module, "tqdm", Bar)
    config = tiny_config(train={"epochs": 3, "batch_size": 32})
    program = build_program(config, 64, (8, 8))
    trainer = trainer_module.Trainer(program, config.train, digits.train[:128], digits.test[:8])
    steps = [0]

    def poison(t):  # the third step's parameters become NaN, so the fourth loss is NaN
        steps[0] += 1
        if steps[0] == 3:
            with torch.no_grad():
                next(t.program.parameters()).fill_(float("nan"))

    trainer.on_step = poison
    with pytest.raises(UserError, match="the loss became nan"):
        trainer.fit()
    assert len(opened) == 2 and all(bar.closed for bar in opened)
