"""Property-based tests: any config, argument list, data array or corrupted checkpoint ends in a
clear UserError (exit code 2 on the command line) or in a correct result — never a traceback,
and never a changed file that existed before."""

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.config import SECTIONS, Config, DataConfig, flag_of, from_dict, options_of
from ppl_vae.data.datasets import load_data
from ppl_vae.data.rowfile import as_tensor
from ppl_vae.errors import UserError
from tests.conftest import tiny_config

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
)
known = {section: list(vars(getattr(Config(), section))) for section in ("data", "model", "guide", "train")}
sections = st.dictionaries(
    st.sampled_from(list(known) + ["extra"]),
    st.dictionaries(st.sampled_from(sum(known.values(), []) + ["bogus"]), values, max_size=4),
    max_size=4,
)


@FUZZ
@given(sections)
def test_any_config_dict_is_valid_or_a_user_error(data):
    try:
        config = from_dict(data).validate()
    except UserError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert isinstance(config, Config)
    assert config.model.sigma > 0 and config.train.epochs >= 1


def _snapshot(root: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


FLAGS = [flag_of(name, opt) for cls in SECTIONS.values() for name, _, opt in options_of(cls)]
tokens = st.one_of(
    # --overwrite is left out: with it, a valid argument list rightly replaces the run
    st.sampled_from(FLAGS + ["--resume", "--config", "--out", "-x", "--", "--ove", "--over"]),
    st.sampled_from(
        ["0", "-1", "1e9", "nan", "inf", "digits", "mnist", "normal", "iaf", "vamp", "", "x.npy", "a.toml"]
    ),
    st.text(max_size=8),
)


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    ppl_vae.fit(tiny_config(train={"epochs": 1}), out, progress=False)
    return out


@FUZZ
@given(st.lists(tokens, max_size=8))
def test_any_fit_arguments_end_in_one_line_and_change_nothing(existing_run, args):
    before = _snapshot(existing_run)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["fit", *args, "--out", str(existing_run)])
        except SystemExit as exit_:  # argparse
            code = exit_.code
    if code == 0:  # a help request is a correct run
        assert any(a in ("-h", "--help") for a in args)
        return
    assert code == 2, err.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    assert _snapshot(existing_run) == before


arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.uint8, np.int16, np.bool_, np.complex64, np.float16]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    elements=None,
)


@FUZZ
@given(arrays)
def test_any_data_array_loads_or_is_refused(array):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, array)
        try:
            data = load_data(DataConfig(name=str(path)))
        except UserError as err:
            assert str(err) and "\n" not in str(err)
            return
        train, test = as_tensor(data.train), as_tensor(data.test)
    assert train.dtype == torch.float32 and train.ndim == 2 and train.shape[1] == data.data_dim
    assert len(train) >= 1 and len(test) >= 1 and len(train) + len(test) == len(array)
    assert torch.isfinite(train).all() and torch.isfinite(test).all()
    expected = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
    assert sorted(map(tuple, np.concatenate([train.numpy(), test.numpy()]))) == sorted(
        map(tuple, expected.reshape(len(array), -1))
    )


@FUZZ
@given(
    target=st.sampled_from(["state.json", "weights", "optimizer"]),
    position=st.floats(0, 1, exclude_max=True),
    action=st.sampled_from(["flip", "truncate", "zero"]),
    byte=st.integers(0, 255),
)
def test_corrupted_checkpoint_bytes_are_refused_or_harmless(existing_run, target, position, action, byte):
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(existing_run, copy)
        ckpt = copy / "checkpoint"
        file = ckpt / "state.json" if target == "state.json" else next(ckpt.glob(f"{target}-*.safetensors"))
        original = file.read_bytes()
        data = bytearray(original)
        i = int(position * len(data))
        if action == "flip":
            data[i] ^= byte or 1
        elif action == "truncate":
            data = data[:i]
        else:
            data[i] = 0
        file.write_bytes(bytes(data))
        before = _snapshot(copy)
        try:
            run = ppl_vae.load(copy)
        except UserError as err:
            assert str(err)
        else:  # no change at all, or one the format tolerates (JSON whitespace, a number in the history)
            assert bytes(data) == original or target == "state.json"
            assert run.sample(2).shape == (2, 64)
        assert _snapshot(copy) == before
