"""The recorded traceenum step: enumerated discrete latents summed densely, the same loss and gradients as
Pyro's ``TraceEnum_ELBO`` on the same noise, the labels an input of the recording."""

import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ppl_vae
from examples.ss_vae_m2 import M2, joined
from ppl_vae.inference import compiled
from ppl_vae.inference.compiled import RecordedStep
from ppl_vae.inference.objectives import Objective
from ppl_vae.inference.trainer import Trainer
from tests.conftest import tiny_config

M2_SMALL = f"{Path(__file__).resolve().parents[3]}/examples/ss_vae_m2.py:m2_small"


class MaskedM2(nn.Module):
    """An M2 whose batches mix labelled and unlabelled points: ``y`` (B,) holds -1 where a point has no label.

    The guide enumerates y for every point; q(y|x) is the classifier where y = -1 and a point mass
    on the label elsewhere, so a labelled point's sum has one term of probability one (the others have
    probability zero: the values Pyro's expectation drops with ``masked_select``).
    """

    def __init__(self, D: int = 6, L: int = 2, C: int = 3):
        super().__init__()
        self.C, self.L = C, L
        self.classifier = nn.Linear(D, C)
        self.encoder = nn.Linear(D + C, 2 * L)
        self.decoder = nn.Linear(L + C, D)

    def model(self, x, y):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(self.C)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(joined(z, y)), 1.0).to_event(1), obs=x)

    def guide(self, x, y):
        point = torch.where(F.one_hot(y.clamp(min=0), self.C).bool(), 0.0, -torch.inf).to(x.dtype)  # (B, C)
        logits = torch.where((y >= 0)[:, None], point, self.classifier(x))
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=logits), infer={"enumerate": "parallel"})
            loc, raw = self.encoder(joined(x, y)).chunk(2, -1)  # (C, K, B, L) for every value of y
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 0.1).to_event(1))


def eager_step(program, objective, x, scale, beta, **inputs):
    loss = objective(program.model, program.guide, x, scale=scale, beta=beta, **inputs)
    return loss.detach(), torch.autograd.grad(loss, list(program.parameters()), allow_unused=True)


def assert_step_equals_eager(program, recorded, objective, x, scale, beta, seed, **inputs):
    torch.manual_seed(seed)
    want_loss, want_grads = eager_step(program, objective, x, scale, beta, **inputs)
    torch.manual_seed(seed)
    loss = recorded(x, scale, beta, **inputs)
    assert loss is not None, recorded.reason
    torch.testing.assert_close(loss, want_loss, rtol=1e-7, atol=0)
    for (name, p), want in zip(program.named_parameters(), want_grads):
        assert (p.grad is None) == (want is None), name
        if want is not None:
            torch.testing.assert_close(p.grad, want, rtol=1e-7, atol=1e-7 * float(want.abs().max()), msg=name)


X = torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
MIXED = torch.tensor([0, -1, 2, -1, 1, -1, -1, 0])  # some labelled, some not, in one batch


@pytest.mark.parametrize("scale,beta", [(1.0, 1.0), (37.5, 0.3)])
@pytest.mark.parametrize("particles", [1, 3])
def test_a_batch_of_labelled_and_unlabelled_points_steps_as_traceenum(scale, beta, particles):
    """Same noise → the recorded step's loss and every gradient equal TraceEnum_ELBO's, with N/B and β."""
    torch.manual_seed(0)
    program = MaskedM2().double()
    recorded = RecordedStep(program, Objective("traceenum", particles), "replayed")
    objective = Objective("traceenum", particles)
    for seed, y in enumerate((MIXED, MIXED.roll(3), torch.full((8,), -1))):  # the labels differ at every call
        assert_step_equals_eager(program, recorded, objective, X, scale, beta, seed, y=y)
    assert recorded.kind == "replayed" and len(recorded.recorder.graphs) == 1  # y is an input, not a constant


@pytest.mark.parametrize("labelled", [True, False])
def test_the_m2_example_steps_as_traceenum_on_labelled_and_unlabelled_batches(labelled):
    """The example's M2: y observed (its classification factor too) or summed out; one recording per kind of batch."""
    torch.manual_seed(0)
    program = M2(6, 2, 3, hidden=8, alpha=5.0).double()
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    recorded = RecordedStep(program, Objective("traceenum"), "replayed")
    objective = Objective("traceenum")
    for seed in (1, 2):
        y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(seed)) if labelled else None
        assert_step_equals_eager(program, recorded, objective, x, 12.0, 0.5, seed, y=y)
    assert len(recorded.recorder.graphs) == 1


def test_a_model_enumerated_site_steps_as_traceenum():
    """y summed out inside the model (absent from the guide): log-sum-exp'd in the recording as in TraceEnum_ELBO."""
    from tests.ppl_vae.inference.test_enumeration import ModelMixture

    program = ModelMixture()
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    recorded = RecordedStep(program, Objective("traceenum", 2), "replayed")
    for seed in (1, 2):
        assert_step_equals_eager(program, recorded, Objective("traceenum", 2), x, 4.0, 1.0, seed)


def test_the_compiled_step_equals_traceenum():
    torch.manual_seed(0)
    program = MaskedM2().double()
    recorded = RecordedStep(program, Objective("traceenum"), "compiled")
    for seed, y in enumerate((MIXED, MIXED.roll(1))):
        assert_step_equals_eager(program, recorded, Objective("traceenum"), X, 5.0, 0.7, seed, y=y)
    assert recorded.kind == "compiled", recorded.reason


def _m2_config(compile_, **train):
    return tiny_config(
        model={"program": M2_SMALL, "latent_dim": 3, "hidden_dim": 16},
        data={"labels": "60", "limit": 200},
        train={"epochs": 2, "elbo": "traceenum", "batch_size": 32, "compile": compile_, **train},
    )


def test_m2_with_labels_trains_replayed_and_as_eager(tmp_path, monkeypatch):
    """--compile auto records the M2 step once the run is long enough (made short here): the same numbers."""
    monkeypatch.setattr(compiled, "REPLAY_STEPS", 1)
    runs = {}
    for compile_ in ("auto", False):
        run = ppl_vae.fit(_m2_config(compile_), tmp_path / str(compile_), progress=False, trust_program=True)
        runs[compile_] = run
    metrics = {k: json.loads((tmp_path / str(k) / "metrics.json").read_text()) for k in runs}
    assert metrics["auto"]["step"] == "replayed" and metrics[False]["step"] == "eager"
    for a, b in zip(runs["auto"].history, runs[False].history):
        assert a["train_objective"] == pytest.approx(b["train_objective"], rel=1e-5)
        assert a["test_elbo"] == pytest.approx(b["test_elbo"], rel=1e-5)


class ReadsBack(M2):
    """An M2 whose guide reads a tensor back on labelled batches: cannot be recorded."""

    def guide(self, x, y=None):
        if y is not None and int(y.max()) > 100:
            raise AssertionError("unreachable")
        return super().guide(x, y)


def test_an_unrecordable_labelled_program_falls_back_to_eager_in_one_line(digits, monkeypatch):
    monkeypatch.setattr(compiled, "REPLAY_STEPS", 1)
    labels = torch.full((200,), -1)
    labels[:40] = torch.as_tensor(digits.train_labels[:40])
    config = tiny_config(train={"epochs": 1, "elbo": "traceenum", "batch_size": 32})
    trainer = Trainer(ReadsBack(64, 3, 10, hidden=16), config.train, digits.train[:200], digits.test[:8], labels=labels)
    assert trainer.step_kind == "eager" and trainer.compiled is None
    assert trainer.step_reason.startswith("eager step: --compile cannot record this program")
    assert trainer.step_reason.endswith("(fallback)") and "\n" not in trainer.step_reason
