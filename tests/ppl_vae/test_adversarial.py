"""Adversarial inputs, as a new user would type them and as an attacker would plant them.

Every case runs the command line in-process against one shared folder that holds a trained
and evaluated run, a run made from a user's program, a study, and broken data, program,
config and checkpoint files. Each case must end in exit status 2 with one line on stderr and
no traceback, leave the sha256 of every file in that folder (and the set of files) unchanged,
and never import the planted program (it writes a marker file when imported).
"""

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ppl_vae.cli import main
from ppl_vae.storage.checkpoint import state_digest

FAST = ["--epochs", "1", "--hidden-dim", "16", "--no-progress"]
EVAL = ["--k", "8", "--points", "20", "--gap-points", "2", "--gap-steps", "2", "--sbc-simulations", "10"]
EVAL += ["--sbc-draws", "5", "--idata-points", "30", "--idata-draws", "8", "--no-progress"]

PROGRAM = """
import pyro, pyro.distributions as dist
from torch import nn

class Program(nn.Module):
    def __init__(self, data_dim, latent_dim):
        super().__init__()
        self.latent_dim = latent_dim
        self.dec = nn.Linear(latent_dim, data_dim)
        self.enc = nn.Linear(data_dim, 2 * latent_dim)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            {model_extra}
            pyro.sample("x", dist.Normal(self.dec(z), 0.1).to_event(1), obs=x)

    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("{guide_site}", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

def make(data_dim, latent_dim):
    {factory_extra}
    return Program(data_dim, latent_dim)
"""


def program(model_extra="pass", guide_site="z", factory_extra="pass", head=""):
    return head + PROGRAM.format(model_extra=model_extra, guide_site=guide_site, factory_extra=factory_extra)


def _snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return code, err.getvalue()


def _resign(path: Path, edit) -> None:
    """Edit a checkpoint's state.json and sign it again, as whoever planted the change would."""
    state = json.loads(path.read_text())
    edit(state)
    state["sha256"] = state_digest(state)
    path.write_text(json.dumps(state))


def _set(keys, value):
    def edit(state):
        target = state
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _retensor(run: Path, role: str, edit) -> None:
    """Edit the tensors of a checkpoint file (``weights`` or ``state``) and record the new bytes' sha256 in a
    state.json signed again: a checkpoint every digest of which checks out."""
    state_path = run / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    file = run / "checkpoint" / state["files"][role]["name"]
    tensors = dict(load_tensors(file.read_bytes()))
    edit(tensors, state)
    file.write_bytes(save_tensors(tensors))
    state["files"][role]["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    state["sha256"] = state_digest(state)
    state_path.write_text(json.dumps(state))


def _first_weight(tensors):
    return next(k for k, v in tensors.items() if v.dim() == 2)


def _rename_moment(tensors, state):
    tensors["optim.0.exp_avg_sqq"] = tensors.pop("optim.0.exp_avg_sq")
    layout = state["optimizer"]["state"]["0"]
    layout["exp_avg_sqq"] = layout.pop("exp_avg_sq")


TENSORS = {  # copy of the run -> (checkpoint file, edit of its tensors): every digest recomputed, as a planter would
    "weights-shape": ("weights", lambda t, s: t.update({_first_weight(t): torch.zeros(3, 3)})),
    "weights-dtype": ("weights", lambda t, s: t.update({_first_weight(t): t[_first_weight(t)].double()})),
    "weights-missing": ("weights", lambda t, s: t.pop(_first_weight(t))),
    "weights-nan": ("weights", lambda t, s: t[_first_weight(t)].fill_(float("nan"))),
    "weights-inf": ("weights", lambda t, s: t[_first_weight(t)].view(-1)[0:1].fill_(float("inf"))),
    "optimizer-shape": ("state", lambda t, s: t.update({"optim.0.exp_avg": torch.zeros(7, 3)})),
    "optimizer-shape-of-another-parameter": (
        "state",
        lambda t, s: t.update({"optim.0.exp_avg": t["optim.1.exp_avg"].clone()}),
    ),
    "optimizer-dtype": ("state", lambda t, s: t.update({"optim.0.exp_avg_sq": t["optim.0.exp_avg_sq"].double()})),
    "optimizer-nan": ("state", lambda t, s: t["optim.0.exp_avg_sq"].fill_(float("nan"))),
    "optimizer-step-shape": ("state", lambda t, s: t.update({"optim.0.step": torch.zeros(5)})),
    "optimizer-name": ("state", _rename_moment),
    "rng-cuda-text": ("state", lambda t, s: t.update({"rng.cuda.0": torch.zeros(4)})),
}

CORRUPT = {  # copy of the run -> the edit of its checkpoint state (signed again unless said otherwise)
    "epoch-negative": _set(["epoch"], -1),
    "step-text": _set(["step"], "x"),
    "rng-short": _set(["rng", "numpy", 1], [1, 2, 3]),
    "optimizer-lr-text": _set(["optimizer", "param_groups", 0, "lr"], "fast"),
    "optimizer-orphan": _set(["optimizer", "state", "999"], {"step": "tensor"}),
    "history-not-list": _set(["extra", "history"], {"a": 1}),
    "history-short": _set(["extra", "history"], []),
    "data-dim-zero": _set(["extra", "data_dim"], 0),
    "image-shape-mismatch": _set(["extra", "image_shape"], [7, 7]),
    "extra-unknown": _set(["extra", "surprise"], 1),
    "files-extra-role": _set(["files", "more"], {"name": "x.safetensors", "sha256": "0" * 64}),
    "file-outside": _set(["files", "weights", "name"], "../../x.safetensors"),
    "version-99": _set(["version"], 99),
    "format-foreign": _set(["format"], "something-else"),
    "field-unknown": _set(["unexpected"], True),
    "config-invalid": _set(["config", "model", "sigma"], -1.0),
    "config-unknown-key": _set(["config", "model", "nope"], 1),
    # a position that the data cannot reach: beyond the epoch, or a step that does not add up
    "position-beyond-epoch": _set(["extra", "batch_index"], 10**6),
    "position-step": _set(["step"], 5),
}
POSITION = [name for name in CORRUPT if name.startswith("position-")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("adversarial")
    assert cli(["fit", "--out", str(w / "run"), "--epochs", "2", "--hidden-dim", "16", "--no-progress"])[0] == 0
    assert cli(["evaluate", str(w / "run"), *EVAL])[0] == 0
    (w / "prog.py").write_text(program())
    assert cli(["fit", "--model", f"{w}/prog.py:make", "--out", str(w / "prog_run"), *FAST])[0] == 0

    # programs that fail in every way a program can
    (w / "evil.py").write_text(f"with open({str(w / 'PWNED')!r}, 'w') as f:\n    f.write('imported')\n" + program())
    (w / "import_raises.py").write_text("raise RuntimeError('no GPU here')\n")
    (w / "import_exits.py").write_text("import sys\nsys.exit(0)\n")
    (w / "syntax.py").write_text("def make(:\n")
    (w / "factory_raises.py").write_text(program(factory_extra="1 / 0"))
    (w / "not_module.py").write_text("def make(data_dim, latent_dim):\n    return 42\n")
    (w / "model_raises.py").write_text(program(model_extra="raise KeyError('boom')"))
    (w / "sites_differ.py").write_text(program(guide_site="w"))
    # finite at the start; NaN as soon as the first step has moved the parameter t
    diverges = program(model_extra="z = z + self.t * (1.0 if float(self.t.detach()) == 0.5 else float('nan'))")
    diverges = "import torch\n" + diverges.replace(
        "super().__init__()", "super().__init__()\n        self.t = nn.Parameter(torch.tensor(0.5))"
    )
    (w / "diverges.py").write_text(diverges)

    # data files that are not what they claim
    rng = np.random.default_rng(0)
    nan = rng.random((20, 4)).astype(np.float32)
    nan[3, 1] = np.nan
    np.save(w / "nan.npy", nan)
    (w / "text.npy").write_text("1,2,3\n4,5,6\n")
    (w / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(w / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    np.savez(w / "keys.npz", pixels=rng.random((10, 4)))
    np.save(w / "trunc.npy", rng.random((50, 4)).astype(np.float32))
    (w / "trunc.npy").write_bytes((w / "trunc.npy").read_bytes()[:-40])
    np.save(w / "fortran.npy", np.asfortranarray(rng.random((20, 4)).astype(np.float32)))
    np.save(w / "flat.npy", rng.random(20).astype(np.float32))
    np.save(w / "wide.npy", rng.random((20, 5)).astype(np.float32))
    (w / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file, not really")
    (w / "notpng.png").write_text("my notes, not an image")
    (w / "dir.png").mkdir()
    (w / "afile").write_text("a file, not a folder")

    # configs
    (w / "bad.toml").write_text("[model\n")
    (w / "unknown_key.toml").write_text("[model]\nsigmaa = 1.0\n")
    (w / "wrong_type.toml").write_text("[train]\nepochs = 'many'\n")

    # folders that are not ours, or ours holding someone's file
    (w / "foreign").mkdir()
    (w / "foreign" / "photo.jpg").write_bytes(b"\xff\xd8 a photo")
    shutil.copytree(w / "run", w / "datarun")
    np.save(w / "datarun" / "data.npy", rng.random((30, 64)).astype(np.float32))
    (w / "study" / "runs").mkdir(parents=True)
    (w / "study" / "ppl_vae-study.json").write_text('{"format": "ppl_vae-study", "kind": "compare", "version": 1}')
    shutil.copytree(w / "run", w / "study" / "runs" / "guide-iaf")  # a diagonal run where guide-iaf belongs
    (w / "sweep").mkdir()
    (w / "sweep" / "ppl_vae-study.json").write_text('{"format": "ppl_vae-study", "kind": "sigma-sweep", "version": 1}')

    # a run of built-in programs whose state.json (signed again) and config.toml name a program
    for name, key in (("planted", "model"), ("planted_guide", "guide")):
        shutil.copytree(w / "run", w / name)
        spec = f"{w}/evil.py:make"
        _resign(
            w / name / "checkpoint" / "state.json", _set(["config", key, "program" if key == "model" else "name"], spec)
        )
        toml = (w / name / "config.toml").read_text()
        field = 'program = ""' if key == "model" else 'name = "diagonal"'
        (w / name / "config.toml").write_text(toml.replace(field, field.split("=")[0] + f'= "{spec}"'))
    # the user program's run with its stored copy replaced
    shutil.copytree(w / "prog_run", w / "prog_tampered")
    (w / "prog_tampered" / "program" / "model.py").write_text((w / "evil.py").read_text())

    # corrupt checkpoints
    for name, edit in CORRUPT.items():
        shutil.copytree(w / "run", w / f"ckpt-{name}")
        _resign(w / f"ckpt-{name}" / "checkpoint" / "state.json", edit)
    for name, (role, edit) in TENSORS.items():
        shutil.copytree(w / "run", w / f"ckpt-{name}")
        _retensor(w / f"ckpt-{name}", role, edit)
    shutil.copytree(w / "run", w / "ckpt-unsigned")
    state = w / "ckpt-unsigned" / "checkpoint" / "state.json"
    state.write_text(state.read_text().replace('"epoch": 2', '"epoch": 1'))
    for name in ("pickle", "flipped", "metrics-text", "metrics-type", "metrics-missing"):
        shutil.copytree(w / "run", w / f"ckpt-{name}")
    weights = next((w / "ckpt-pickle" / "checkpoint").glob("weights-*.safetensors"))
    weights.write_bytes(pickle.dumps({"weights": torch.zeros(2)}))
    weights = next((w / "ckpt-flipped" / "checkpoint").glob("weights-*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    (w / "ckpt-metrics-text" / "metrics.json").write_text("{not json")
    metrics = json.loads((w / "run" / "metrics.json").read_text())
    (w / "ckpt-metrics-type" / "metrics.json").write_text(json.dumps({**metrics, "epochs": "two"}))
    (w / "ckpt-metrics-missing" / "metrics.json").write_text(json.dumps({"sigma": 0.1}))

    # FIFOs where a file is read: reading one would wait for a writer forever
    for name in ("fifo-state", "fifo-weights"):
        shutil.copytree(w / "run", w / name)
    os.unlink(w / "fifo-state" / "checkpoint" / "state.json")
    os.mkfifo(w / "fifo-state" / "checkpoint" / "state.json")
    weights = next((w / "fifo-weights" / "checkpoint").glob("weights-*.safetensors"))
    os.unlink(weights)
    os.mkfifo(weights)
    for name in ("fifo.toml", "fifo.npy", "fifo.py", "fifo.png"):
        os.mkfifo(w / name)

    # folders of a run or study that a link carries out of it
    (w / "outside").mkdir()
    (w / "outside" / "theirs.txt").write_text("someone else's folder")
    for name, folder in (("link-figures", "figures"), ("link-evaluation", "evaluation"), ("link-checkpoint", "best")):
        shutil.copytree(w / "run", w / name)
        if (w / name / folder).exists():
            shutil.rmtree(w / name / folder)
        (w / name / folder).symlink_to(w / "outside", target_is_directory=True)
    shutil.copytree(w / "study", w / "link-study", symlinks=True)
    shutil.rmtree(w / "link-study" / "runs")
    (w / "link-study" / "runs").symlink_to(w / "outside", target_is_directory=True)

    # a .npy whose header gives a negative length
    with open(w / "negative.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (-5, 16)})
        f.write(b"\0" * 64)
    return w


FIT = ["fit", *FAST]
NEW = ["--out", "{w}/new"]
SAMPLE = ["sample", "{w}/run", "--out", "{w}/s.png"]
EVALUATE = ["evaluate", "{w}/run", *EVAL]
COMPARE = ["compare", *FAST, *EVAL, "--out", "{w}/new-study"]
SWEEP = ["sigma-sweep", *FAST, *EVAL, "--out", "{w}/new-sweep"]

CASES = {
    # fit: numbers out of range, before any work
    "fit seed negative": ([*FIT, *NEW, "--seed", "-1"], r"train\.seed\) must lie in"),
    "fit seed 2**32": ([*FIT, *NEW, "--seed", str(2**32)], r"train\.seed\) must lie in"),
    "fit seed not an integer": ([*FIT, *NEW, "--seed", "1e3"], "expects int"),
    "fit epochs zero": ([*FIT, *NEW, "--epochs", "0"], r"train\.epochs"),
    "fit epochs huge": ([*FIT, *NEW, "--epochs", "10000000"], r"train\.epochs"),
    "fit batch zero": ([*FIT, *NEW, "--batch-size", "0"], r"train\.batch_size"),
    "fit lr zero": ([*FIT, *NEW, "--lr", "0"], r"train\.lr\) must lie in"),
    "fit lr nan": ([*FIT, *NEW, "--lr", "nan"], "finite"),
    "fit sigma tiny": ([*FIT, *NEW, "--sigma", "1e-7"], r"model\.sigma"),
    "fit latent zero": ([*FIT, *NEW, "--latent-dim", "0"], r"model\.latent_dim"),
    "fit particles beyond range": ([*FIT, *NEW, "--particles", str(2**21)], r"train\.particles"),
    "fit particles beyond memory": (
        [*FIT, *NEW, "--particles", str(2**20), "--hidden-dim", "65536"],
        r"training needs at least .* of memory",
    ),
    "fit test fraction one": ([*FIT, *NEW, "--test-fraction", "1"], r"data\.test_fraction"),
    "fit unknown device": ([*FIT, *NEW, "--device", "tpu"], "unknown device"),
    "fit distributed without torchrun": ([*FIT, *NEW, "--distributed"], "torchrun"),
    # fit: data files
    "data missing": ([*FIT, *NEW, "--data", "{w}/missing.npy"], "data file not found"),
    "data text as npy": ([*FIT, *NEW, "--data", "{w}/text.npy"], "not a .npy array"),
    "data npz not a zip": ([*FIT, *NEW, "--data", "{w}/bad.npz"], "cannot read the data set"),
    "data npz of objects": ([*FIT, *NEW, "--data", "{w}/obj.npz"], "cannot read the data set"),
    "data npz wrong keys": ([*FIT, *NEW, "--data", "{w}/keys.npz"], "expected arrays"),
    "data NaN": ([*FIT, *NEW, "--data", "{w}/nan.npy"], r"NaN or infinite in row 3 \(of rows 0\.\.19\)"),
    "data truncated": ([*FIT, *NEW, "--data", "{w}/trunc.npy"], "shorter than its header"),
    "data fortran order": ([*FIT, *NEW, "--data", "{w}/fortran.npy"], "Fortran"),
    "data one-dimensional": ([*FIT, *NEW, "--data", "{w}/flat.npy"], "shape"),
    "data mat not a mat": ([*FIT, *NEW, "--data", "frey", "--data-root", "{w}/bad.mat"], "cannot read"),
    "data mnist bad npz": ([*FIT, *NEW, "--data", "mnist", "--data-root", "{w}/bad.npz"], "cannot read"),
    # fit: config files
    "config missing": ([*FIT, *NEW, "--config", "{w}/missing.toml"], "config file not found"),
    "config not toml": ([*FIT, *NEW, "--config", "{w}/bad.toml"], "not valid TOML"),
    "config unknown key": ([*FIT, *NEW, "--config", "{w}/unknown_key.toml"], "unknown key"),
    "config wrong type": ([*FIT, *NEW, "--config", "{w}/wrong_type.toml"], "must be of type int"),
    # FIFOs: refused at once, never waited on
    "config a FIFO": ([*FIT, *NEW, "--config", "{w}/fifo.toml"], r"config file .*fifo\.toml is a FIFO"),
    "data a FIFO": ([*FIT, *NEW, "--data", "{w}/fifo.npy"], r"fifo\.npy is a FIFO"),
    "program a FIFO": ([*FIT, *NEW, "--model", "{w}/fifo.py:make"], r"fifo\.py is a FIFO"),
    "sample state.json a FIFO": (["sample", "{w}/fifo-state", "--out", "{w}/s.png"], r"state\.json is a FIFO"),
    "sample weights a FIFO": (["sample", "{w}/fifo-weights", "--out", "{w}/s.png"], r"weights file .* is a FIFO"),
    "evaluate weights a FIFO": (["evaluate", "{w}/fifo-weights", *EVAL], r"is a FIFO"),
    "resume state.json a FIFO": (["fit", "--resume", "{w}/fifo-state", "--epochs", "3"], r"state\.json is a FIFO"),
    "sample out a FIFO": (["sample", "{w}/run", "--out", "{w}/fifo.png"], r"--out .*fifo\.png is a FIFO"),
    "data npy of a negative length": ([*FIT, *NEW, "--data", "{w}/negative.npy"], r"shape \(-5, 16\), which no array"),
    "guide name of a megabyte": ([*FIT, *NEW, "--guide", "g" * 10**6], r"characters cut"),
    # fit: output paths
    "out is a run": ([*FIT, "--out", "{w}/run"], "--overwrite"),
    "out is someone's folder": ([*FIT, "--out", "{w}/foreign", "--overwrite"], "not a ppl_vae run or study"),
    "out holds the data": (
        [*FIT, "--out", "{w}/datarun", "--overwrite", "--data", "{w}/datarun/data.npy"],
        r"holds files ppl_vae did not write \(data\.npy\)",
    ),
    "out is a file": ([*FIT, "--out", "{w}/afile"], "not a directory"),
    "out is the working directory": ([*FIT, "--out", "."], "is the working directory or holds it"),
    "out holds the working directory": ([*FIT, "--out", "/", "--overwrite"], "is the working directory or holds it"),
    "out under a file": ([*FIT, "--out", "{w}/afile/run"], "not a directory"),
    "out is a study of another kind": ([*FIT, "--out", "{w}/study"], "--overwrite"),
    "lr 1e30 overwrite keeps the old run": ([*FIT, "--out", "{w}/run", "--overwrite", "--lr", "1e30"], r"train\.lr"),
    "diverging overwrite keeps the old run": (
        [*FIT, "--out", "{w}/run", "--overwrite", "--model", "{w}/diverges.py:make"],
        r"loss became .* step 2; training stopped before its first checkpoint: .*run is as it was",
    ),
    # fit: program files
    "program missing": ([*FIT, *NEW, "--model", "{w}/missing.py:make"], "program file not found"),
    "program raises at import": ([*FIT, *NEW, "--model", "{w}/import_raises.py:make"], "RuntimeError: no GPU here"),
    "program exits at import": ([*FIT, *NEW, "--model", "{w}/import_exits.py:make"], "SystemExit"),
    "program syntax error": ([*FIT, *NEW, "--model", "{w}/syntax.py:make"], "SyntaxError"),
    "program factory raises": (
        [*FIT, *NEW, "--model", "{w}/factory_raises.py:make"],
        r"factory_raises\.py:make raised ZeroDivisionError.* line \d+, in make",
    ),
    "program not a module": ([*FIT, *NEW, "--model", "{w}/not_module.py:make"], "not a torch.nn.Module"),
    "program raises in model": (
        [*FIT, *NEW, "--model", "{w}/model_raises.py:make"],
        r"raised KeyError: 'boom' \(.*model_raises\.py line \d+, in model; last site 'z'\)",
    ),
    "program site names differ": (
        [*FIT, *NEW, "--model", "{w}/sites_differ.py:make"],
        "the guide samples 'w', which the model does not have as latents",
    ),
    "program without factory": ([*FIT, *NEW, "--model", "{w}/prog.py"], "path/to/file.py:factory"),
    "program factory missing": ([*FIT, *NEW, "--guide", "{w}/prog.py:nothing"], "no callable 'nothing'"),
    # fit --resume
    "resume with another lr": (["fit", "--resume", "{w}/run", "--lr", "0.1"], r"not --lr"),
    "resume with overwrite": (["fit", "--resume", "{w}/run", "--overwrite"], r"not --overwrite"),
    "resume with a config": (["fit", "--resume", "{w}/run", "--config", "{w}/bad.toml"], r"not --config"),
    "resume elsewhere": (["fit", "--resume", "{w}/run", "--out", "{w}/new"], "in place"),
    "resume missing": (["fit", "--resume", "{w}/missing"], "does not exist"),
    "resume someone's folder": (["fit", "--resume", "{w}/foreign"], "not a ppl_vae run"),
    "resume fewer epochs": (["fit", "--resume", "{w}/run", "--epochs", "1"], "fewer than the 2 epochs"),
    "resume planted program": (["fit", "--resume", "{w}/planted", "--epochs", "3"], "no stored copy"),
    "resume planted program trusted": (
        ["fit", "--resume", "{w}/planted", "--epochs", "3", "--trust-program"],
        "no stored copy",
    ),
    "resume program untrusted": (["fit", "--resume", "{w}/prog_run", "--epochs", "2"], "--trust-program"),
    # runs belong to themselves: nothing written through a link that leaves the run, checked before the work
    "resume figures linked outside": (
        ["fit", "--resume", "{w}/link-figures", "--epochs", "3"],
        r"link-figures/figures leads to .*outside, outside",
    ),
    "resume best linked outside": (["fit", "--resume", "{w}/link-checkpoint", "--epochs", "3"], r"best leads to"),
    "evaluate evaluation linked outside": (
        ["evaluate", "{w}/link-evaluation", *EVAL],
        r"link-evaluation/evaluation leads to .*outside",
    ),
    # every tensor of a checkpoint, the optimizer's included, and its position, before anything is loaded or written
    **{
        f"resume {name}": (["fit", "--resume", f"{{w}}/ckpt-{name}", "--epochs", "3"], message)
        for name, message in {
            "weights-shape": r"is float32 \[3, 3\], expected float32",
            "weights-nan": r"holds NaN or infinite values",
            "weights-missing": r"no tensor",
            "optimizer-shape": r"optimizer tensor 0\.exp_avg is float32 \[7, 3\], expected float32",
            "optimizer-shape-of-another-parameter": r"optimizer tensor 0\.exp_avg is float32",
            "optimizer-dtype": r"optimizer tensor 0\.exp_avg_sq is float64",
            "optimizer-nan": r"holds NaN or infinite values",
            "optimizer-step-shape": r"optimizer tensor 0\.step is float32 \[5\]",
            "optimizer-name": r"state of parameter 0 holds \['exp_avg', 'exp_avg_sqq', 'step'\]",
            "rng-cuda-text": r"CUDA RNG states are malformed",
            "position-beyond-epoch": r"batch_index 1000000 is beyond the \d+ batches of an epoch",
            "position-step": r"step 5 is not epoch 2 x \d+ batches \+ batch_index 0",
        }.items()
    },
    **{
        f"{command} {name}": ([command, f"{{w}}/ckpt-{name}", *args], message)
        for command, args in (("sample", ["--out", "{w}/s.png"]), ("evaluate", EVAL))
        for name, message in {
            "weights-shape": r"is float32 \[3, 3\]",
            "weights-dtype": r"is float64",
            "weights-missing": r"no tensor",
            "weights-nan": r"holds NaN or infinite values",
            "weights-inf": r"holds NaN or infinite values",
        }.items()
    },
    # sample
    "sample n zero": ([*SAMPLE, "--n", "0"], r"sample\.n\) must lie in"),
    "sample n huge": ([*SAMPLE, "--n", "100000"], r"sample\.n\) must lie in"),
    "sample seed negative": ([*SAMPLE, "--seed", "-1"], r"sample\.seed\) must lie in"),
    "sample seed 2**32": ([*SAMPLE, "--seed", str(2**32)], r"sample\.seed\) must lie in"),
    "sample out not png": (["sample", "{w}/run", "--out", "{w}/s.jpg"], r"\.png"),
    "sample out a folder": (["sample", "{w}/run", "--out", "{w}/dir.png"], "is a directory"),
    "sample out someone's file": (["sample", "{w}/run", "--out", "{w}/notpng.png"], "not a PNG"),
    "sample out under a file": (["sample", "{w}/run", "--out", "{w}/afile/s.png"], "not a directory"),
    "sample run missing": (["sample", "{w}/missing", "--out", "{w}/s.png"], "not found"),
    "sample someone's folder": (["sample", "{w}/foreign", "--out", "{w}/s.png"], "not a ppl_vae checkpoint"),
    "sample planted program": (["sample", "{w}/planted", "--out", "{w}/s.png"], "no stored copy"),
    "sample planted guide trusted": (
        ["sample", "{w}/planted_guide", "--out", "{w}/s.png", "--trust-program"],
        "no stored copy",
    ),
    "sample program untrusted": (
        ["sample", "{w}/prog_run", "--out", "{w}/s.png"],
        r"program/model\.py \(sha256 [0-9a-f]{64}\).*--trust-program",
    ),
    "sample tampered program trusted": (
        ["sample", "{w}/prog_tampered", "--out", "{w}/s.png", "--trust-program"],
        "does not match the sha256",
    ),
    # checkpoints: every field of state.json and metrics.json
    **{
        f"checkpoint {name}": (["sample", f"{{w}}/ckpt-{name}", "--out", "{w}/s.png"], message)
        for name, message in {
            "epoch-negative": "epoch must be",
            "step-text": "step must be",
            "rng-short": "rng.numpy",
            "optimizer-lr-text": "optimizer setting 'lr'",
            "optimizer-orphan": "for no parameter",
            "history-not-list": "history must list",
            "history-short": "history must list",
            "data-dim-zero": "data_dim",
            "image-shape-mismatch": "image_shape",
            "extra-unknown": "unexpected fields",
            "files-extra-role": "weights and state files",
            "file-outside": "must be a .safetensors file in the checkpoint",
            "version-99": "version 99",
            "format-foreign": "format tag",
            "field-unknown": "unexpected fields",
            "config-invalid": "config is invalid",
            "config-unknown-key": "unknown key",
            "unsigned": "its own sha256",
            "pickle": "pickle",
            "flipped": "sha256",
            "metrics-text": "not a valid metrics file",
            "metrics-type": "'epochs' must be an integer",
            "metrics-missing": "no 'train_objective'",
        }.items()
    },
    # evaluate
    "evaluate k one": ([*EVALUATE, "--k", "1"], r"evaluate\.k\) must lie in"),
    "evaluate k 10**12": ([*EVALUATE, "--k", str(10**12)], r"evaluate\.k\) must lie in"),
    "evaluate beyond memory": (
        [*EVALUATE, "--sbc-simulations", "1000000", "--sbc-draws", "100000"],
        "this evaluation needs at least",
    ),
    "evaluate points negative": ([*EVALUATE, "--points", "-1"], r"evaluate\.points"),
    "evaluate unknown data": ([*EVALUATE, "--data", "nonsense"], "unknown data set"),
    "evaluate data of another width": ([*EVALUATE, "--data", "{w}/wide.npy"], "values a row"),
    "evaluate planted program": (["evaluate", "{w}/planted", *EVAL], "no stored copy"),
    "evaluate planted program trusted": (["evaluate", "{w}/planted", *EVAL, "--trust-program"], "no stored copy"),
    "evaluate program untrusted": (["evaluate", "{w}/prog_run", *EVAL], "--trust-program"),
    "evaluate corrupt metrics": (["evaluate", "{w}/ckpt-metrics-text", *EVAL], "metrics"),
    "evaluate unknown device": ([*EVALUATE, "--device", "tpu"], "unknown device"),
    # compare
    "compare seeds zero": ([*COMPARE, "--grid", "latent_dim=2,3", "--seeds", "0"], r"study\.seeds\) must lie in"),
    "compare seeds huge": ([*COMPARE, "--grid", "latent_dim=2,3", "--seeds", "100000"], r"study\.seeds\) must lie in"),
    "compare grid malformed": ([*COMPARE, "--grid", "guide"], "--grid must look like"),
    "compare grid unknown key": ([*COMPARE, "--grid", "nokey=1"], "unknown or ambiguous"),
    "compare grid repeated value": ([*COMPARE, "--grid", "guide=iaf,iaf"], "twice"),
    "compare grid value out of range": ([*COMPARE, "--grid", "sigma=0,0.1"], r"model\.sigma\) must lie in"),
    "compare grid empty value": ([*COMPARE, "--grid", "guide=,iaf"], r"part 'guide=,iaf' has an empty value"),
    "compare grid empty value last": ([*COMPARE, "--grid", "guide=iaf,"], r"part 'guide=iaf,' has an empty value"),
    "compare grid repeated key": (
        [*COMPARE, "--grid", "guide=diagonal;guide=iaf"],
        r"part 'guide=iaf' sets guide\.name again \(part 'guide=diagonal' set it\)",
    ),
    "compare grid two names for one option": (
        [*COMPARE, "--grid", "sigma=0.1;model.sigma=0.2"],
        r"part 'model\.sigma=0\.2' sets model\.sigma again \(part 'sigma=0\.1'",
    ),
    "compare grid and a flag for one option": (
        [*COMPARE, "--grid", "guide=diagonal,iaf", "--guide", "iaf"],
        r"--grid sets 'guide' and so does an option given beside it",
    ),
    "compare study runs linked outside": (
        ["compare", *FAST, *EVAL, "--grid", "guide=iaf", "--out", "{w}/link-study"],
        r"link-study/runs leads to .*outside, outside",
    ),
    "compare nothing to compare": (COMPARE, "compare needs"),
    "compare variants missing": ([*COMPARE, "--variants", "{w}/missing.toml"], "config file not found"),
    "compare into a run": (["compare", *FAST, "--grid", "latent_dim=2,3", "--out", "{w}/run"], "is a ppl_vae run"),
    "compare into someone's folder": (
        ["compare", *FAST, "--grid", "latent_dim=2,3", "--out", "{w}/foreign"],
        "not empty and not a ppl_vae compare study",
    ),
    "compare into a sweep": (["compare", *FAST, "--grid", "latent_dim=2,3", "--out", "{w}/sweep"], "sigma-sweep study"),
    "compare into a file": (["compare", *FAST, "--grid", "latent_dim=2,3", "--out", "{w}/afile"], "not a directory"),
    "compare replaces a run of another config": (
        ["compare", *FAST, *EVAL, "--grid", "guide=iaf", "--out", "{w}/study"],
        r"runs/guide-iaf holds a run of another config \(guide\.name",
    ),
    "compare with a failing program": (
        [*COMPARE, "--grid", "latent_dim=2,3", "--model", "{w}/model_raises.py:make"],
        "raised KeyError",
    ),
    # sigma-sweep
    "sweep sigma zero": ([*SWEEP, "--sigmas", "0,0.1"], "positive"),
    "sweep sigma text": ([*SWEEP, "--sigmas", "0.1,abc"], "comma-separated numbers"),
    "sweep sigma nan": ([*SWEEP, "--sigmas", "nan"], "positive"),
    "sweep sigma out of range": ([*SWEEP, "--sigmas", "1e-7"], r"model\.sigma\) must lie in"),
    "sweep into a run": (["sigma-sweep", *FAST, "--sigmas", "0.1", "--out", "{w}/run"], "is a ppl_vae run"),
    "sweep into someone's folder": (["sigma-sweep", *FAST, "--sigmas", "0.1", "--out", "{w}/foreign"], "not empty"),
    "sweep into a comparison": (["sigma-sweep", *FAST, "--sigmas", "0.1", "--out", "{w}/study"], "compare study"),
    "sweep of another likelihood": ([*SWEEP, "--sigmas", "0.1", "--likelihood", "bernoulli"], "fixed-σ"),
    "sweep of a program": ([*SWEEP, "--sigmas", "0.1", "--model", "{w}/prog.py:make"], "fixed-σ"),
}


def test_the_suite_is_large_and_covers_every_command():
    assert len(CASES) >= 60
    commands = {argv[0] for argv, _ in CASES.values()}
    assert commands == {"fit", "sample", "evaluate", "compare", "sigma-sweep"}


@pytest.mark.parametrize("case", list(CASES))
def test_adversarial_input_is_one_line_exit_2_and_changes_nothing(case, world):
    argv, message = CASES[case]
    argv = [a.format(w=world) for a in argv]
    before = _snapshot(world)
    code, err = cli(argv)
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    assert _snapshot(world) == before
    assert not (world / "PWNED").exists(), "a planted program was imported"


def test_every_planted_tensor_and_position_has_a_case():
    planted = {name for name in TENSORS} | set(POSITION)
    assert planted <= {argv[2 if argv[0] == "fit" else 1].rpartition("ckpt-")[2] for argv, _ in CASES.values()}


def test_a_message_of_user_text_is_bounded(world):
    _, err = cli([*FIT, *NEW, "--guide", "g" * 10**6])
    assert len(err) < 1100 and err.count("g") < 1000, len(err)


def test_data_nan_message_names_rows_inside_the_file(world):
    _, err = cli([*FIT, *NEW, "--data", f"{world}/nan.npy"])
    rows = [int(n) for n in re.findall(r"\brows? (\d+)", err) + re.findall(r"\.\.(\d+)", err)]
    assert rows and max(rows) <= 19, err
