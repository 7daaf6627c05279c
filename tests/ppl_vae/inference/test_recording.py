"""The one recording lifecycle: ordinary tensor code records, a refusal is one line, a disagreement falls back."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ppl_vae.diagnostics.estimators import importance_sample
from ppl_vae.inference.compiled import RecordedStep
from ppl_vae.inference.objectives import Objective
from ppl_vae.inference.recording import Recorder, Unrecordable


class OneHot(nn.Module):
    """A program that one-hot encodes a class read off x (its first column's sign), as M2 encodes its labels."""

    def __init__(self, dim: int = 3, num_classes: int | None = 2):
        super().__init__()
        self.num_classes = num_classes
        self.dec = nn.Linear(2 + 2, dim)
        self.enc = nn.Linear(dim + 2, 2)

    def classes(self, x):
        c = (x[..., 0] > 0).long()
        return F.one_hot(c) if self.num_classes is None else F.one_hot(c, self.num_classes)

    def model(self, x):
        c = self.classes(x).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample(
                "x", dist.Normal(self.dec(torch.cat([z, c.expand(z.shape[:-1] + (2,))], -1)), 1.0).to_event(1), obs=x
            )

    def guide(self, x):
        c = self.classes(x).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.enc(torch.cat([x, c], -1)), 1.0).to_event(1))


def test_one_hot_with_num_classes_records_and_gives_the_eager_step():
    program = OneHot().double()
    recorded = RecordedStep(program, Objective("trace"), "replayed")
    for seed in (1, 2):  # recorded and checked on the first batch, checked again on the second
        x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        want = Objective("trace")(program.model, program.guide, x, scale=2.0, beta=1.0)
        want_grads = torch.autograd.grad(want, list(program.parameters()))
        torch.manual_seed(seed)
        assert torch.allclose(recorded(x, 2.0, 1.0), want.detach(), rtol=1e-9, atol=1e-9)
        for p, g in zip(program.parameters(), want_grads):
            assert torch.allclose(p.grad, g, rtol=1e-8, atol=1e-9)
    assert recorded.kind == "replayed" and not recorded.reason


def test_one_hot_with_num_classes_records_in_the_sampler():
    program = OneHot().double()
    x = torch.randn(40, 3, dtype=torch.float64)
    runs = {}
    for mode in ("off", "replayed"):
        pyro.set_rng_seed(3)
        runs[mode] = importance_sample(program.model, program.guide, x, k=50, rows=200, compile=mode)
    assert torch.allclose(runs["replayed"].log_w, runs["off"].log_w, rtol=1e-9, atol=1e-9)


def test_one_hot_without_num_classes_is_refused_in_one_line_naming_the_line():
    program = OneHot(num_classes=None)
    with pytest.raises(Unrecordable) as refused:
        RecordedStep(program, Objective("trace"), "replayed")(torch.randn(4, 3), 1.0, 1.0)
    message = str(refused.value)
    line = OneHot.classes.__code__.co_firstlineno + 2  # `return F.one_hot(c) if ...`
    assert "\n" not in message and len(message) < 300, message
    assert "F.one_hot without num_classes" in message and f"at test_recording.py:{line}, in classes" in message
    assert message.endswith("; train without --compile")


def _recorder(fn, kind="replayed", forced=False, says=None, shapes=None):
    return Recorder(
        lambda static: fn,
        lambda static: fn,
        kind,
        forced=forced,
        flag="--flag",
        hint="run without --flag",
        what="thing",
        shapes=shapes,
        replay_pays=True,
        say=None if says is None else says.append,
    )


def _reads_back(x):  # its mean, read back as a number, becomes a constant of the recording
    return x + sum(x.tolist()) / len(x)


def test_a_value_read_back_is_caught_on_the_next_inputs_and_falls_back_once():
    says = []
    recorder = _recorder(_reads_back, says=says)
    first = torch.tensor([1.0, 2.0])
    assert torch.equal(recorder((), first), _reads_back(first))  # its own inputs cannot show it
    assert recorder((), torch.tensor([5.0, 7.0])) is None  # the next inputs of the shape do: eager from now
    assert recorder((), first) is None and recorder.kind == "eager"
    assert says == [recorder.reason] and recorder.reason.startswith("eager thing: --flag: the recording gives ")
    assert recorder.reason.endswith("(fallback)")


def test_forced_raises_with_the_hint_and_other_shapes_run_eagerly():
    recorder = _recorder(_reads_back, forced=True)
    recorder((), torch.tensor([1.0, 2.0]))
    with pytest.raises(Unrecordable, match=r"read tensor values back as numbers .*; run without --flag$") as refused:
        recorder((), torch.tensor([5.0, 7.0]))
    assert refused.value.hint == "run without --flag"
    one = _recorder(torch.sin, shapes=1)
    assert one((), torch.zeros(3)) is not None and one((), torch.zeros(4)) is None and len(one.graphs) == 1
