"""The recorded training step: the same loss, gradients and draws as the eager program, or a refusal."""

import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppl_vae
from ppl_vae.errors import UserError
from ppl_vae.inference.compiled import RecordedStep
from ppl_vae.inference.distributed import Cluster
from ppl_vae.inference.objectives import Objective
from ppl_vae.inference.trainer import Trainer
from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config


def eager_step(program, objective, x, scale, beta):
    loss = objective(program.model, program.guide, x, scale=scale, beta=beta)
    grads = torch.autograd.grad(loss, list(program.parameters()), allow_unused=True)
    return loss.detach(), grads


@pytest.mark.parametrize(
    "model,guide,train,kind",
    [
        ({}, {}, {}, "compiled"),
        ({}, {}, {}, "replayed"),
        ({"likelihood": "bernoulli", "prior": "vamp"}, {"name": "iaf"}, {}, "replayed"),
        ({"likelihood": "normal-learned", "prior": "mog"}, {"name": "lowrank"}, {"particles": 3}, "replayed"),
        ({"prior": "flow"}, {"name": "spline"}, {"elbo": "iwae", "particles": 4}, "replayed"),
    ],
)
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_recorded_step_equals_the_eager_objective(digits, model, guide, train, kind, beta):
    """Same noise → the recorded (and compiled) step's loss and every gradient equal Pyro's (float64, to 1e-9)."""
    config = tiny_config(model={"latent_dim": 4, **model}, guide=guide, train=train)
    program = build_program(config, 64, (8, 8), init_data=digits.train[:64]).double()
    x, scale = digits.train[:24].double(), 7.5
    objective = Objective(config.train.elbo, config.train.particles)
    parameters = list(program.parameters())
    recorded = RecordedStep(program, Objective(config.train.elbo, config.train.particles), kind)
    for seed in (1, 2):  # the second call replays the recording of the first
        torch.manual_seed(seed)
        want_loss, want_grads = eager_step(program, objective, x, scale, beta)
        torch.manual_seed(seed)
        loss = recorded(x, scale, beta)
        assert torch.allclose(loss, want_loss, rtol=1e-9, atol=1e-9), (loss, want_loss)
        for (name, p), want in zip(program.named_parameters(), want_grads):
            assert (p.grad is None) == (want is None), name
            if want is not None:
                assert torch.allclose(p.grad, want, rtol=1e-8, atol=1e-9), name
    assert len(recorded.recorder.graphs) == 1
    # recording hands back the very Parameter objects an optimizer holds (the VampPrior shares the encoder)
    assert all(a is b for a, b in zip(program.parameters(), parameters))


def test_recorded_draws_follow_the_rng_like_eager_draws(digits):
    """Recording, checking and compiling draw nothing; a compiled step advances the RNG exactly as an eager step."""
    config = tiny_config()
    program = build_program(config, 64, (8, 8))
    x = digits.train[:16]
    recorded = RecordedStep(program, Objective("trace"))
    torch.manual_seed(5)
    recorded.check(x)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(5).get_state())
    recorded(x, 2.0, 1.0)  # recorded, compiled, verified, then run: only the run draws
    assert len(recorded.recorder.graphs) == 1
    after_recorded = torch.get_rng_state()
    torch.manual_seed(5)
    eager_step(program, Objective("trace"), x, 2.0, 1.0)
    assert torch.equal(after_recorded, torch.get_rng_state())


@pytest.mark.parametrize("prior", ["standard", "vamp"])
def test_compiled_training_follows_eager_training(digits, prior):
    """Two epochs with β annealing, compiled: the same ELBOs and weights as eager.

    Also with an encoder shared by two programs (the VampPrior's). 250 rows in batches of 64: the
    full batch is the one shape compiled, the ragged last batch (58 rows) is replayed.
    """
    x = digits.train[:250]
    runs, graphs = {}, {}
    for compile_ in (False, True):
        config = tiny_config(
            model={"prior": prior},
            train={"compile": compile_, "epochs": 2, "batch_size": 64, "anneal": "linear", "anneal_epochs": 2},
        )
        pyro.set_rng_seed(0)
        program = build_program(config, 64, (8, 8), init_data=x)
        trainer = Trainer(program, config.train, x, digits.test[:50], progress=False)
        runs[compile_] = (trainer.fit(), program)
        graphs[compile_] = trainer.compiled and trainer.compiled.recorder.graphs
    assert trainer.step_kind == "compiled"
    replayed = {key[2][0][0]: isinstance(graph, torch.fx.GraphModule) for key, graph in graphs[True].items()}
    assert replayed == {64: False, 58: True}, replayed  # key: (static, params, x's (shape, dtype, device), ...)
    (eager, p_eager), (compiled, p_compiled) = runs[False], runs[True]
    for a, b in zip(eager, compiled):
        assert a["train_objective"] == pytest.approx(b["train_objective"], rel=1e-5)
        assert a["test_elbo"] == pytest.approx(b["test_elbo"], rel=1e-5)
    for (name, a), b in zip(p_eager.named_parameters(), p_compiled.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


class _Toy(nn.Module):
    """A one-latent program whose guide is chosen per test."""

    def __init__(self, guide_kind: str, dim: int = 3):
        super().__init__()
        self.net = nn.Linear(dim, dim)
        self.kind, self.dim = guide_kind, dim

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            if self.kind == "discrete":
                z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(self.dim)).to_event(1))
            else:
                z = pyro.sample("z", dist.Normal(torch.zeros(self.dim), 1.0).to_event(1))
            if self.kind == "branch" and x.sum() > 0:
                z = z * 2
            pyro.sample("x", dist.Normal(self.net(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            if self.kind == "discrete":
                pyro.sample("z", dist.Bernoulli(torch.sigmoid(self.net(x))).to_event(1))
            elif self.kind == "param":
                loc = pyro.param("loc", torch.zeros(self.dim))
                pyro.sample("z", dist.Normal(loc + self.net(x), 1.0).to_event(1))
            else:
                pyro.sample("z", dist.Normal(self.net(x), 1.0).to_event(1))


@pytest.mark.parametrize(
    "kind,elbo,message",
    [
        ("discrete", "trace", "score-function"),
        ("param", "trace", r"pyro.param site\(s\) loc"),
        ("branch", "trace", "branches on tensor values"),
        ("plain", "meanfield", "records the trace, traceenum and iwae ELBOs"),
    ],
)
def test_unrecordable_programs_are_refused(kind, elbo, message):
    program = _Toy(kind)
    with pytest.raises(UserError, match=message):
        RecordedStep(program, Objective(elbo), "replayed")(torch.randn(4, 3), 1.0, 1.0)
    assert not list(pyro.get_param_store().keys())  # refused before any run could store a pyro.param


def test_the_plain_toy_records():
    """The control for the refusals above: the same program without the defect records and agrees."""
    program = _Toy("plain")
    x = torch.randn(4, 3)
    torch.manual_seed(0)
    want, _ = eager_step(program, Objective("trace"), x, 1.0, 1.0)
    torch.manual_seed(0)
    assert torch.allclose(RecordedStep(program, Objective("trace"), "replayed")(x, 1.0, 1.0), want)


def test_compile_with_several_processes_is_refused(digits):
    config = tiny_config(train={"compile": True})
    program = build_program(config, 64, (8, 8))
    with pytest.raises(UserError, match="--compile trains one process"):
        Trainer(program, config.train, digits.train[:32], digits.test[:8], cluster=Cluster(rank=0, world=2))


def test_fit_with_compile_from_the_command_line(tmp_path, capsys, monkeypatch):
    import json

    from ppl_vae.cli import main

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))

    out = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "--out",
                str(out),
                "--epochs",
                "2",
                "--limit",
                "256",
                "--batch-size",
                "128",
                "--compile",
                "--no-progress",
            ]
        )
        == 0
    )
    assert 'compile = "on"' in (out / "config.toml").read_text()
    assert json.loads((out / "metrics.json").read_text())["step"] == "compiled"
    assert not (tmp_path / "cache" / "compile-seconds.json").exists()  # no timing is kept for a later choice
    assert main(["fit", "--out", str(tmp_path / "mf"), "--epochs", "1", "--compile", "--elbo", "meanfield"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err[-1]) < 300 and "records the trace, traceenum and iwae ELBOs" in err[-1]
    assert not (tmp_path / "mf").exists()


def test_an_unrecordable_program_is_refused_before_the_run_directory_exists(tmp_path, capsys):
    from ppl_vae.cli import main

    program = tmp_path / "toy.py"
    program.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})\n"
        "from tests.ppl_vae.inference.test_compiled import _Toy\n"
        "def make(data_dim, latent_dim):\n"
        "    return _Toy('branch', data_dim)\n"
    )
    out = tmp_path / "run"
    assert main(["fit", "--out", str(out), "--model", f"{program}:make", "--compile", "--no-progress"]) == 2
    assert "branches on tensor values" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "steps,recordable,kind",
    [
        (1_200, True, "eager"),  # make run: 100 epochs of 12 steps, shorter than recording repays
        (1_500, True, "replayed"),
        (14_999, True, "replayed"),
        (15_000, True, "compiled"),
        (10**6, False, "eager"),  # a program that cannot be recorded, however long the run
    ],
)
def test_the_default_step_is_a_function_of_the_runs_length(steps, recordable, kind):
    from ppl_vae.inference.compiled import COMPILE_STEPS, REPLAY_STEPS, default_step

    assert (REPLAY_STEPS, COMPILE_STEPS) == (1_500, 15_000)  # the constants BENCHMARKS.md gives reasons for
    assert default_step(steps, recordable) == kind


@pytest.mark.parametrize(
    "epochs,program,kind,says",
    [
        (2, None, "eager", "eager step: 6 steps (--compile auto: replayed from 1500 steps, compiled from 15000)"),
        (700, None, "replayed", "replayed step: 2100 steps (--compile auto: "),
        (20_000, None, "compiled", "compiled step: 60000 steps (--compile auto: "),
        (20_000, "branch", "eager", "eager step: --compile cannot record this program"),  # cannot record: eager
    ],
)
def test_the_default_step_is_chosen_by_the_rule(digits, epochs, program, kind, says, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    config = tiny_config(train={"epochs": epochs})  # compile = "auto", the default
    assert config.train.compile == "auto"
    x = digits.train[:300]  # batches of 128, 128 and 44: three steps an epoch
    model = build_program(config, 64, (8, 8)) if program is None else _Toy(program, 64)
    trainer = Trainer(model, config.train, x, digits.test[:8], progress=False)
    assert trainer.step_kind == kind and (trainer.compiled is not None) == (kind != "eager"), trainer.step_reason
    assert trainer.compiled is None or trainer.compiled.kind == kind
    assert trainer.step_reason.startswith(says), trainer.step_reason


class _Sleepy(nn.Module):
    """A built program whose model sleeps ``seconds`` at every call: an eager step as slow as a busy machine's."""

    def __init__(self, program: nn.Module, seconds: float):
        super().__init__()
        self.program, self.seconds = program, seconds

    def model(self, x):
        time.sleep(self.seconds)
        return self.program.model(x)

    def guide(self, x):
        return self.program.guide(x)


@pytest.mark.parametrize("epochs", [2, 700, 20_000])
def test_the_default_step_does_not_depend_on_how_fast_the_machine_is(digits, epochs, tmp_path, monkeypatch):
    """The same config takes the same step when every eager step is slowed down by 50 ms, and says the same."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    config = tiny_config(train={"epochs": epochs})
    x = digits.train[:300]
    chosen = []
    for seconds in (0.0, 0.05):
        torch.manual_seed(0)
        program = _Sleepy(build_program(config, 64, (8, 8)), seconds)
        trainer = Trainer(program, config.train, x, digits.test[:8], progress=False)
        chosen.append((trainer.step_kind, trainer.step_reason))
    assert chosen[0] == chosen[1], chosen
    assert chosen[0][0] == {2: "eager", 700: "replayed", 20_000: "compiled"}[epochs]


def test_a_resumed_run_keeps_its_replayed_step_and_trains_as_eager(digits):
    """The replayed step (recorded, not compiled) is the eager step's arithmetic: the same weights after an epoch."""
    config = tiny_config(train={"epochs": 1})
    x = digits.train[:300]
    runs = {}
    # a checkpoint written before the kinds had one vocabulary stored replay and off: the same kinds
    for kind, stored in (("replayed", "replayed"), ("eager", "eager"), ("replayed", "replay"), ("eager", "off")):
        pyro.set_rng_seed(0)
        program = build_program(config, 64, (8, 8))
        trainer = Trainer(program, config.train, x, digits.test[:8], progress=False, step_kind=stored)
        assert trainer.step_kind == kind, (stored, trainer.step_kind)
        assert trainer.step_reason == f"{kind} step, as when the run started"
        assert (trainer.compiled is None) == (kind == "eager")
        assert trainer.compiled is None or trainer.compiled.kind == "replayed"
        trainer.run_epoch()
        runs[stored] = program
    for (name, a), b in zip(runs["replayed"].named_parameters(), runs["eager"].parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    for old, new in (("replay", "replayed"), ("off", "eager")):  # an old name trains exactly as the new one
        assert all(torch.equal(a, b) for a, b in zip(runs[old].parameters(), runs[new].parameters())), old


def test_fit_announces_its_step_in_one_line(tmp_path, capsys):
    from ppl_vae.cli import main

    assert main(["fit", "--out", str(tmp_path / "r"), "--epochs", "1", "--hidden-dim", "16"]) == 0
    err = [  # what the bench is doing goes to stdout: stderr is for what went wrong
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("ppl-vae: ") and not line.startswith("ppl-vae: epoch ")
    ]
    assert len(err) == 1 and err[0].startswith("ppl-vae: eager step: ") and "(--compile auto: " in err[0]
    import json

    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["step"] == "eager"


class _Registered(nn.Module):
    """A user's program in Pyro's idiom: its networks registered with ``pyro.module`` at the top of model and guide."""

    def __init__(self, data_dim: int, latent_dim: int = 2):
        super().__init__()
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 16), nn.Tanh(), nn.Linear(16, data_dim))
        self.encoder = nn.Linear(data_dim, 2 * latent_dim)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.2).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc, raw = self.encoder(x).chunk(2, dim=-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def test_a_program_registered_with_pyro_module_records_and_agrees():
    """pyro.module's sites are the program's own parameters: recorded, the same loss and gradients as eager."""
    program = _Registered(5).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    recorded = RecordedStep(program, Objective("trace"), "replayed")
    for seed in (1, 2):
        torch.manual_seed(seed)
        want_loss, want_grads = eager_step(program, Objective("trace"), x, 3.0, 1.0)
        torch.manual_seed(seed)
        assert torch.allclose(recorded(x, 3.0, 1.0), want_loss, rtol=1e-9, atol=1e-9)
        for (name, p), want in zip(program.named_parameters(), want_grads):
            assert torch.allclose(p.grad, want, rtol=1e-8, atol=1e-9), name
    assert not list(pyro.get_param_store().keys())  # recording answered pyro.module without the store


def _program_file(tmp_path, factory: str) -> Path:
    program = tmp_path / "program.py"
    program.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})\n"
        "from tests.ppl_vae.inference.test_compiled import _Registered, _Toy\n"
        "def make(data_dim, latent_dim):\n"
        f"    return {factory}\n"
    )
    return program


def test_a_user_program_registered_with_pyro_module_trains_compiled_as_eager(tmp_path):
    """``--model file.py:make`` in Pyro's idiom: ``--compile`` and the eager step give the same ELBOs."""
    from ppl_vae.cli import main

    program = _program_file(tmp_path, "_Registered(data_dim)")
    common = ["--model", f"{program}:make", "--epochs", "2", "--limit", "256", "--batch-size", "128", "--no-progress"]
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        assert main(["fit", "--out", str(tmp_path / name), *common, *extra]) == 0, name
    eager, compiled = (ppl_vae.load(tmp_path / name, trust_program=True).history for name in ("eager", "compiled"))
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled):
        assert a["train_objective"] == pytest.approx(b["train_objective"], rel=1e-5)
        assert a["test_elbo"] == pytest.approx(b["test_elbo"], rel=1e-5)
    assert eager[-1]["train_objective"] > eager[0]["train_objective"]  # and it trained
    assert not list(pyro.get_param_store().keys())


@pytest.mark.parametrize("extra", [[], ["--compile"]])
def test_a_raw_pyro_param_is_refused_in_one_line_before_the_run_directory_exists(tmp_path, capsys, extra):
    from ppl_vae.cli import main

    program = _program_file(tmp_path, "_Toy('param', data_dim)")
    out = tmp_path / "run"
    assert main(["fit", "--out", str(out), "--model", f"{program}:make", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) < 300
    assert "pyro.param site(s) loc are not parameters of the program's modules" in err[0]
    assert not out.exists()
    assert not list(pyro.get_param_store().keys())


def test_inductor_kernels_are_kept_in_the_users_cache_folder(tmp_path, monkeypatch):
    """Not in the temporary folder a reboot empties; an explicit TORCHINDUCTOR_CACHE_DIR is respected."""
    from ppl_vae.inference.recording import kept_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert kept_cache() == str(tmp_path / "cache" / "ppl_vae" / "inductor")
    assert (tmp_path / "cache" / "ppl_vae" / "inductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert kept_cache() == str(tmp_path / "mine")


def test_a_program_that_reads_values_back_is_caught_on_its_second_batch(digits):
    """`.tolist()` records (the batch's mean becomes a constant): the second batch of the shape shows it;
    --compile refuses there, auto goes on eagerly and trains what an eager run trains."""
    from tests.ppl_vae.unrecordable import ReadsBack

    x = digits.train[:300]  # batches of 128, 128 and 44
    weights = {}
    for mode in ("on", "auto", "off"):
        torch.manual_seed(0)
        program = ReadsBack(64)
        # 20,000 epochs of 3 steps: auto compiles; one epoch is trained
        settings = tiny_config(train={"compile": mode, "epochs": 20_000}).train
        trainer = Trainer(program, settings, x, x[:8], progress=False)
        assert trainer.step_kind == ("eager" if mode == "off" else "compiled"), trainer.step_reason
        if mode == "on":
            with pytest.raises(UserError, match="read tensor values back as numbers"):
                trainer.run_epoch()
            continue
        trainer.run_epoch()
        assert trainer.step_kind == "eager"
        if mode == "auto":
            assert trainer.step_reason.startswith("eager step: --compile: the recording gives "), trainer.step_reason
            assert trainer.step_reason.endswith("(fallback)")
        weights[mode] = [p.detach().clone() for p in program.parameters()]
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(weights["auto"], weights["off"]))


def test_an_unusable_inductor_cache_folder_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """torch makes TORCHINDUCTOR_CACHE_DIR when its compiler is first imported (the optimizer does): say so first."""
    from ppl_vae.cli import main

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    out = tmp_path / "run"
    assert main(["fit", "--out", str(out), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TORCHINDUCTOR_CACHE_DIR=" in err[0] and "cannot be made a folder" in err[0], err
    assert not out.exists()
