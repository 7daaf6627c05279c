"""Checkpoints: bit-identical round trips, no pickle, refusal of anything tampered with."""

import json
import pickle
import shutil
from pathlib import Path

import pyro
import pytest
import torch

import ppl_vae
from ppl_vae.errors import CheckpointError
from ppl_vae.storage.checkpoint import load_checkpoint, read_state, state_digest
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pyro.set_rng_seed(0)
    return ppl_vae.fit(tiny_config(train={"epochs": 1}), tmp_path_factory.mktemp("ckpt") / "run", progress=False)


def test_round_trip_is_bit_identical(run):
    loaded = ppl_vae.load(run.path)
    x = run.dataset().test[:16]
    z = torch.randn(5, run.config.model.latent_dim)
    for a, b in [
        (run.program.model_module.decoder(z), loaded.program.model_module.decoder(z)),
        (run.program.guide_module.encoder(x).base_dist.loc, loaded.program.guide_module.encoder(x).base_dist.loc),
        (run.program.guide_module.encoder(x).base_dist.scale, loaded.program.guide_module.encoder(x).base_dist.scale),
    ]:
        assert torch.equal(a, b)
    for (name, p), (name2, q) in zip(run.program.state_dict().items(), loaded.program.state_dict().items()):
        assert name == name2 and torch.equal(p, q)


def test_checkpoint_contains_no_pickle(run):
    files = list((run.path / "checkpoint").iterdir())
    assert {f.suffix for f in files} == {".json", ".safetensors"}
    for f in files:
        if f.suffix == ".safetensors":
            head = f.read_bytes()[:9]  # safetensors: 8-byte little-endian header length, then a JSON header
            assert head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= f.stat().st_size, f
            assert head[:2] != b"PK", f"{f} looks like a zip"


def test_a_header_length_that_starts_like_a_pickle_opcode_is_read(tmp_path):
    """A safetensors header of 128 + 256k bytes starts with 0x80, a pickle's first byte; it is still safetensors."""
    from safetensors.torch import save

    from ppl_vae.storage.checkpoint import parse_header

    file = tmp_path / "t.safetensors"
    for pad in range(256):
        data = save({"w": torch.zeros(2)}, metadata={"pad": "x" * pad})
        if data[0] == 0x80:
            break
    file.write_bytes(data)
    parse_header(file.read_bytes(), file)  # no CheckpointError
    pickled = tmp_path / "p.safetensors"
    pickled.write_bytes(pickle.dumps({"w": [0.0, 0.0]}))
    with pytest.raises(CheckpointError, match="pickle"):
        parse_header(pickled.read_bytes(), pickled)


def _copy(run, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run.path, dst)
    return dst


def test_sha_mismatch_is_refused(run, tmp_path):
    dst = _copy(run, tmp_path)
    weights = dst / "checkpoint" / read_state(dst / "checkpoint")["files"]["weights"]["name"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip the bits of one byte of tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        ppl_vae.load(dst)


def test_pickle_in_place_of_weights_is_refused_and_never_run(run, tmp_path):
    dst = _copy(run, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state = read_state(dst / "checkpoint")
    weights = dst / "checkpoint" / state["files"]["weights"]["name"]
    weights.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="pickle"):
        ppl_vae.load(dst)
    # a state.json pointing at a .pt file is refused by name
    (dst / "checkpoint" / "model.pt").write_bytes(pickle.dumps(Payload()))
    state["files"]["weights"]["name"] = "model.pt"
    state["sha256"] = state_digest(state)  # signed again, as whoever planted the file would
    (dst / "checkpoint" / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="safetensors"):
        ppl_vae.load(dst)
    assert not marker.exists()


def test_foreign_state_json_is_refused(run, tmp_path):
    dst = _copy(run, tmp_path)
    (dst / "checkpoint" / "state.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a ppl_vae checkpoint"):
        ppl_vae.load(dst)
    (dst / "checkpoint" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        ppl_vae.load(dst)


def test_weights_of_another_shape_are_refused(run, tmp_path):
    from ppl_vae.runs.build import build_program

    other = tiny_config(model={"latent_dim": 3})
    program = build_program(other, 64, (8, 8))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(run.path / "checkpoint", program)


def test_optimizer_and_rng_round_trip(run, tmp_path):
    """The optimizer state and RNG states come back exactly."""
    from ppl_vae.runs.build import build_program
    from ppl_vae.storage.checkpoint import save_checkpoint

    program = build_program(run.config, 64, (8, 8))
    opt = torch.optim.Adam(program.parameters(), lr=1e-3)
    program.model_module.decoder[0].weight.sum().backward()
    opt.step()
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "c", program, opt, epoch=1, step=1, config=run.config.to_dict())
    expected = torch.rand(3)
    program2 = build_program(run.config, 64, (8, 8))
    opt2 = torch.optim.Adam(program2.parameters(), lr=1e-3)
    load_checkpoint(tmp_path / "c", program2, opt2, restore_rng=True)
    assert torch.equal(torch.rand(3), expected)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert json.loads(json.dumps(s1["param_groups"])) == s2["param_groups"]
    for k in s1["state"]:
        for key, v in s1["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][k][key]))


def _variants():
    from ppl_vae.guides import GUIDES
    from ppl_vae.models import PRIORS

    return [("guide", g) for g in GUIDES] + [("prior", p) for p in PRIORS]


@pytest.mark.parametrize("room,name", _variants(), ids=lambda v: str(v))
def test_every_guide_and_prior_round_trips_bit_identically(room, name, tmp_path):
    """Flows included: autoregressive permutations and masks are buffers and come back (pyro issue 1839)."""
    from ppl_vae.runs.build import build_program
    from ppl_vae.storage.checkpoint import save_checkpoint

    config = tiny_config(guide={"name": name}) if room == "guide" else tiny_config(model={"prior": name})
    init = torch.rand(50, 64)
    pyro.set_rng_seed(0)
    program = build_program(config, 64, (8, 8), init_data=init)
    save_checkpoint(tmp_path / "c", program, None, epoch=0, step=0, config=config.to_dict())
    pyro.set_rng_seed(1)  # a different initialisation: different weights, permutations, pseudo-inputs
    loaded = build_program(config, 64, (8, 8), init_data=init)
    load_checkpoint(tmp_path / "c", loaded)
    x = torch.rand(6, 64)
    draws = []
    for prog in (program, loaded):
        pyro.set_rng_seed(7)
        guide_trace = pyro.poutine.trace(prog.guide).get_trace(x)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(prog.model, trace=guide_trace)).get_trace(x)
        prior_trace = pyro.poutine.trace(prog.model).get_trace(x)
        draws.append((guide_trace.nodes["z"]["value"], model_trace.log_prob_sum(), prior_trace.nodes["z"]["value"]))
    for a, b in zip(*draws):
        assert torch.equal(a, b)


def test_weights_of_another_dtype_are_refused(run, tmp_path):
    from safetensors.torch import load_file, save_file

    from ppl_vae.storage.atomic import sha256_file

    dst = _copy(run, tmp_path)
    state = read_state(dst / "checkpoint")
    weights = dst / "checkpoint" / state["files"]["weights"]["name"]
    tensors = {
        k: v.double() if v.is_floating_point() and v.dtype == torch.float32 else v
        for k, v in load_file(str(weights)).items()
    }
    save_file(tensors, str(weights))
    state["files"]["weights"]["sha256"] = sha256_file(weights)  # a consistent but foreign checkpoint
    state["sha256"] = state_digest(state)
    (dst / "checkpoint" / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="float64"):
        ppl_vae.load(dst)


def _with_header_length_low_byte(data: bytes, low: int) -> bytes:
    """The same safetensors file with its JSON header padded by spaces until its length ends in ``low``."""
    import struct

    n = struct.unpack("<Q", data[:8])[0]
    header, body = data[8 : 8 + n], data[8 + n :]
    header += b" " * ((low - len(header)) % 256)
    return struct.pack("<Q", len(header)) + header + body


def test_a_header_length_whose_low_byte_is_the_pickle_opcode_loads(run, tmp_path):
    """Format detection parses the header (8-byte length, then JSON); 0x80 first is a valid length byte."""
    from ppl_vae.storage.atomic import sha256_bytes

    dst = _copy(run, tmp_path)
    state = read_state(dst / "checkpoint")
    weights = dst / "checkpoint" / state["files"]["weights"]["name"]
    crafted = _with_header_length_low_byte(weights.read_bytes(), 0x80)
    assert crafted[:1] == b"\x80" and crafted[8:9] == b"{"  # the first byte a magic-byte check calls pickle
    weights.write_bytes(crafted)
    state["files"]["weights"]["sha256"] = sha256_bytes(crafted)
    state["sha256"] = state_digest(state)
    (dst / "checkpoint" / "state.json").write_text(json.dumps(state))
    loaded = ppl_vae.load(dst)
    for (name, p), (_, q) in zip(run.program.state_dict().items(), loaded.program.state_dict().items()):
        assert torch.equal(p, q), name


def test_a_trained_run_whose_header_starts_with_0x80_loads(tmp_path):
    """``fit --guide iaf --latent-dim 5`` (the default widths) writes such a file; its run must load."""
    import struct

    from safetensors.torch import save_model

    from ppl_vae.cli import main
    from ppl_vae.runs.build import build_program

    def low_byte(latent_dim):  # the weights' header length depends on names and shapes only
        program = build_program(
            tiny_config(guide={"name": "iaf"}, model={"latent_dim": latent_dim, "hidden_dim": 256}), 64, (8, 8)
        )
        save_model(program, str(tmp_path / "probe.safetensors"))
        return struct.unpack("<Q", (tmp_path / "probe.safetensors").read_bytes()[:8])[0] & 0xFF

    latent_dim = next(d for d in (5, 6, 1, 2, 3, 4, 7, 8) if low_byte(d) == 0x80)
    out = tmp_path / "r"
    assert (
        main(
            [
                "fit",
                "--guide",
                "iaf",
                "--latent-dim",
                str(latent_dim),
                "--epochs",
                "1",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    weights = next((out / "checkpoint").glob("weights-*.safetensors"))
    assert weights.read_bytes()[:1] == b"\x80"
    assert ppl_vae.load(out).sample(3).shape == (3, 64)
    assert main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["fit", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0


def test_a_reader_starts_over_when_a_writer_replaces_the_checkpoint(run, tmp_path, monkeypatch):
    """A reader holding an old state.json whose files are already gone reads the new checkpoint."""
    from ppl_vae.storage import checkpoint as ckpt
    from ppl_vae.storage.checkpoint import read_checkpoint, save_checkpoint

    dst = _copy(run, tmp_path)
    old = (dst / "checkpoint" / "state.json").read_bytes()
    opt = torch.optim.Adam(run.program.parameters())
    save_checkpoint(dst / "checkpoint", run.program, opt, epoch=1, step=99, config=run.config.to_dict(), extra={})
    real, calls = ckpt._read_state_bytes, []

    def stale_first(path):
        calls.append(path)
        return old if len(calls) == 1 else real(path)

    monkeypatch.setattr(ckpt, "_read_state_bytes", stale_first)
    state, contents = read_checkpoint(dst / "checkpoint")
    assert state["step"] == 99 and len(calls) >= 3  # stale read, check, fresh read
    assert set(contents) == {"weights", "state"}
