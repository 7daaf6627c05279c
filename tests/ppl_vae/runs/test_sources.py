"""A run remembers its code and imports it only when trusted (the trust rule).

The program used here writes a marker file each time its code is executed, so "was it
imported?" is a file on disk, not a guess. Modules are cached by the sha256 of their code, so
each check first forgets the cached module.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.config import EvalConfig
from ppl_vae.errors import ProgramError
from ppl_vae.runs.preflight import with_absolute_sources
from ppl_vae.runs.schema import read_run_config
from ppl_vae.storage.checkpoint import read_state, state_digest
from ppl_vae.studies.runner import _plan
from tests.ppl_vae.test_adversarial import program

FAST = ["--epochs", "1", "--hidden-dim", "16", "--no-progress"]


def marker_program(marker: Path) -> str:
    return f"with open({str(marker)!r}, 'a') as f:\n    f.write('imported')\n" + program()


def forget_imported_programs():
    for name in [n for n in sys.modules if n.startswith("ppl_vae_program_")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A run made from a user's program; the program file is then edited (a new marker)."""
    w = tmp_path_factory.mktemp("programs")
    (w / "mine.py").write_text(marker_program(w / "STORED"))
    assert main(["fit", "--model", f"{w}/mine.py:make", "--out", str(w / "run"), *FAST]) == 0
    original = (w / "mine.py").read_bytes()
    (w / "mine.py").write_text(marker_program(w / "EDITED"))
    return w, original


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("builtin") / "run"
    assert main(["fit", "--out", str(run), *FAST]) == 0
    return run


@pytest.fixture
def fresh(made):
    w, _ = made
    forget_imported_programs()
    for name in ("STORED", "EDITED"):
        (w / name).unlink(missing_ok=True)
    return w


def test_the_run_stores_its_program_and_records_its_sha256(made):
    w, original = made
    stored = w / "run" / "program" / "model.py"
    assert stored.read_bytes() == original
    record = read_state(w / "run" / "checkpoint")["extra"]["programs"]
    assert record == {
        "model": {
            "file": "program/model.py",
            "sha256": hashlib.sha256(original).hexdigest(),
            "spec": f"{(w / 'mine.py').resolve()}:make",
        }
    }


def test_loading_imports_nothing_without_trust(fresh):
    with pytest.raises(ProgramError, match=r"program/model\.py \(sha256 [0-9a-f]{64}\).*--trust-program"):
        ppl_vae.load(fresh / "run")
    assert not (fresh / "STORED").exists() and not (fresh / "EDITED").exists()


def test_trusted_loading_imports_the_stored_copy_not_the_file_it_came_from(fresh):
    run = ppl_vae.load(fresh / "run", trust_program=True)
    assert (fresh / "STORED").exists() and not (fresh / "EDITED").exists()
    assert run.sample(2).shape == (2, 64)


def test_a_stored_copy_that_does_not_match_its_digest_is_never_imported(fresh, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fresh / "run", run)
    (run / "program" / "model.py").write_text(marker_program(fresh / "EDITED"))
    with pytest.raises(ProgramError, match="does not match the sha256 recorded"):
        ppl_vae.load(run, trust_program=True)
    assert not (fresh / "EDITED").exists() and not (fresh / "STORED").exists()


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("key", [("model", "program"), ("guide", "name")])
def test_a_program_path_planted_in_a_built_in_run_is_never_imported(fresh, builtin_run, tmp_path, trust, key):
    """Data in a run directory cannot name code to run: trusted or not, nothing is imported."""
    run = tmp_path / "run"
    shutil.copytree(builtin_run, run)
    path = run / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    state["config"][key[0]][key[1]] = f"{fresh}/mine.py:make"
    state["sha256"] = state_digest(state)
    path.write_text(json.dumps(state))
    with pytest.raises(ProgramError, match="holds no stored copy"):
        ppl_vae.load(run, trust_program=trust)
    args = ["--trust-program"] if trust else []
    for argv in (
        ["sample", str(run), "--out", str(tmp_path / "s.png"), *args],
        ["evaluate", str(run), "--k", "4", *args],
        ["fit", "--resume", str(run), "--epochs", "2", *args],
    ):
        assert main(argv) == 2
    assert not (fresh / "EDITED").exists() and not (fresh / "STORED").exists()


def test_resume_of_a_program_run_needs_trust_and_then_imports_the_stored_copy(fresh, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fresh / "run", run)
    assert main(["fit", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    assert not (fresh / "STORED").exists()
    assert main(["fit", "--resume", str(run), "--epochs", "2", "--no-progress", "--trust-program"]) == 0
    assert (fresh / "STORED").exists() and not (fresh / "EDITED").exists()
    assert read_state(run / "checkpoint")["epoch"] == 2


def test_a_study_reuses_a_run_only_while_its_program_file_is_unchanged(made, tmp_path):
    """The study's plan compares the recorded sha256 with the file the study names now."""
    w, original = made
    run = tmp_path / "runs" / "mine"
    shutil.copytree(w / "run", run)
    (tmp_path / "mine.py").write_bytes(original)
    config = read_run_config(run)
    config.model.program = f"{(tmp_path / 'mine.py').resolve()}:make"
    state_path = run / "checkpoint" / "state.json"  # the same run, as if trained from this file
    state = json.loads(state_path.read_text())
    state["config"]["model"]["program"] = config.model.program
    state["extra"]["programs"]["model"]["spec"] = config.model.program
    state["sha256"] = state_digest(state)
    state_path.write_text(json.dumps(state))
    config = with_absolute_sources(config)
    assert _plan(run, config, EvalConfig(), overwrite=False) == "evaluate"  # trained, not yet evaluated
    (tmp_path / "mine.py").write_text(program(model_extra="z = z * 1.0"))
    with pytest.raises(ppl_vae.UserError, match="holds a run of another config .*its program files"):
        _plan(run, config, EvalConfig(), overwrite=False)
    assert _plan(run, config, EvalConfig(), overwrite=True) == "retrain"
