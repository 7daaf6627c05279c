"""README's "Why MSE?" table is what `make sigma-sweep` produces, character for character."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _embed_sweep():
    spec = importlib.util.spec_from_file_location("embed_sweep", ROOT / "docs" / "embed_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_variable(name: str) -> list[str]:
    """The words of ``NAME := ...`` in the Makefile: the sweep's arguments are written there once."""
    found = re.search(rf"^{name}\s*:?=(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, f"the Makefile defines no {name}"
    return shlex.split(found.group(1))


def test_embedding_leaves_out_what_says_who_drew_a_figure_and_when(tmp_path):
    """Two PNGs of the same picture that differ only in their text and time chunks embed as the same bytes."""
    import struct
    import zlib

    embed = _embed_sweep()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\x7f"))
    picture = [embed.PNG_SIGNATURE + header, pixels + chunk(b"IEND", b"")]
    a = picture[0] + chunk(b"tEXt", b"Software\x00Matplotlib version3.9") + picture[1]
    b = picture[0] + chunk(b"tIME", bytes(7)) + chunk(b"tEXt", b"Software\x00Matplotlib version3.10") + picture[1]
    assert a != b and embed.without_metadata(a) == embed.without_metadata(b) == b"".join(picture)
    with pytest.raises(ValueError, match="not a PNG"):
        embed.without_metadata(b"GIF89a")


@pytest.mark.slow
def test_the_readme_table_is_what_make_sigma_sweep_produces(tmp_path):
    """`ppl-vae sigma-sweep $(SWEEP_ARGS)` in a fresh process with the Makefile's thread count, as `make sigma-sweep`
    runs it (several minutes)."""
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "ppl_vae", "sigma-sweep", *_make_variable("SWEEP_ARGS"), "--out", str(out)]
    threads = {"OMP_NUM_THREADS": _make_variable("SWEEP_THREADS")[0]}
    env = {**os.environ, **threads}
    done = subprocess.run([*command, "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    embed = _embed_sweep()
    readme = (ROOT / "README.md").read_text()
    assert embed.embedded(readme, "sigma-sweep") == embed.block(out, "sigma-sweep")
    assert (ROOT / "docs" / "sigma-sweep" / "sweep.md").read_text() == (out / "sweep.md").read_text()
