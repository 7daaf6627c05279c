import os
from pathlib import Path

# one torch thread a test process (and the CLI processes the tests start, which inherit it): the suite runs one
# process per core, and the tests' small networks lose far more to two threads contending for a core than a
# second thread could win them (a variant's training: 4 s on one thread, 11-18 s on two beside another worker)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyro  # noqa: E402
import pytest

from ppl_vae.inference.recording import kept_cache  # noqa: E402

# one TorchInductor cache for the whole run, both workers and the processes they start: the folder the bench keeps
# (a step that two tests compile alike is compiled once); without this, each worker took whichever folder its first
# compile named, torch's temporary one or the bench's
kept_cache()

# ../shared/data beside the checkout; PPL_VAE_DATA (the bench's own variable) points a checkout elsewhere at it
SHARED_DATA = Path(os.environ.get("PPL_VAE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


# the files that take longest, first (measured 2026-12-07): two workers then start on them, and the suite does not end
# with one worker alone on a long file while the other has nothing left (make test prints the slowest tests; it runs
# pytest-xdist with --no-loadscope-reorder, whose default would order the files by their number of tests instead)
LONGEST_FIRST = [
    "tests/ppl_vae/test_reliability.py",
    "tests/ppl_vae/test_benchmarks.py",
    "tests/ppl_vae/studies/test_executors.py",
    "tests/ppl_vae/studies/test_compare.py",
    "tests/ppl_vae/inference/test_compiled.py",
    "tests/ppl_vae/runs/test_transactions.py",
    "tests/ppl_vae/test_adversarial.py",
    "tests/ppl_vae/inference/test_distributed.py",
    "tests/ppl_vae/test_cli.py",
    "tests/ppl_vae/test_pyro_style.py",
    "tests/ppl_vae/studies/test_sweep.py",
    "tests/ppl_vae/diagnostics/test_compiled_sampler.py",
    "tests/ppl_vae/runs/test_variants.py",
    "tests/ppl_vae/data/test_data.py",
    "tests/ppl_vae/inference/test_recorded_enum.py",
    "tests/ppl_vae/runs/test_global_latents.py",
]


def pytest_collection_modifyitems(session, config, items):
    """Run the longest files first (a stable sort: each file's tests keep their order and stay together)."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(autouse=True)
def _pyro_state():
    """Validation on, a clean param store and a fixed seed for every test."""
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (only present beside the development checkout)")
    return SHARED_DATA


@pytest.fixture
def digits():
    from ppl_vae.config import DataConfig
    from ppl_vae.data.datasets import load_data

    return load_data(DataConfig())


def tiny_config(**sections):
    """A fast config: few epochs, small networks; ``sections`` override fields, e.g. train={"epochs": 2}."""
    from ppl_vae.config import Config

    config = Config()
    config.train.epochs = 2
    config.model.hidden_dim = 32
    config.train.batch_size = 128
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    return config.validate()


os.environ.setdefault("TQDM_DISABLE", "1")
