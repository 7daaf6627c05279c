"""Packaging and code health: the wheel maps the rooms into the package; ruff is clean; the installer hands uv
pip's configuration."""

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_maps_models_and_guides_into_the_package(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheel_dir.glob("ppl_vae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ppl_vae/models/vae.py" in names and "ppl_vae/guides/amortized.py" in names
    assert not any(n.startswith(("models/", "guides/", "tests/")) for n in names), "no bare top-level models/guides"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import ppl_vae, ppl_vae.models, ppl_vae.guides; print(ppl_vae.models.__file__); print(ppl_vae.guides.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert line.startswith(str(target)), line


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    """ruff's lint and format rules (pyproject.toml) hold for the whole repository."""
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this Python (pip install -e '.[test]')")
    result = subprocess.run([str(ruff), *command, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:]


def _installer():
    spec = importlib.util.spec_from_file_location("install", ROOT / "tools" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_installer_hands_uv_the_indexes_pip_is_configured_with(tmp_path, monkeypatch):
    """uv reads none of pip's configuration: what `pip config list` and PIP_* say reaches it, in pip's precedence."""
    install = _installer()
    listed = "\n".join(
        [
            "global.extra-index-url='file:///mirror/a file:///mirror/b'",
            "global.find-links='/global/wheels'",
            "install.find-links='/install/wheels'",
            "global.constraint='/etc/constraints.txt'",
            "global.index-url='https://index.example/simple'",
            ":env:.default-timeout='180'",
            "not an option line",
        ]
    )
    environ = {"PIP_FIND_LINKS": "/env/wheels ~/more", "PIP_TIMEOUT": "15.5", "PIP_INDEX_URL": "", "HOME": "/h"}
    options = install.pip_options(listed, environ)
    assert options["find-links"] == ["/env/wheels", "~/more"]  # a variable over [install] over [global]
    assert options["extra-index-url"] == ["file:///mirror/a", "file:///mirror/b"]
    assert options["index-url"] == ["https://index.example/simple"]  # an empty variable is no value, as to pip
    assert options["timeout"] == ["15.5"]  # --timeout and --default-timeout are one option
    assert install.pip_options("install.find-links='/install/wheels'\nglobal.find-links='/g'", {})["find-links"] == [
        "/install/wheels"
    ]
    assert install.pip_options("global.constraint=''", {"PIP_CONSTRAINT": " "}) == {}

    cert = tmp_path / "ca.pem"
    cert.write_text("")
    monkeypatch.setenv("HOME", "/h")
    command, env = install.uv_command(Path("/venv/bin/python"), {**options, "cert": [str(cert)]}, ".[test]")
    assert command[:3] == ["/venv/bin/uv", "pip", "install"] and "--no-config" in command  # pip's settings only
    # the extra indexes first, in pip's order, and the default index last: a version on several comes from a mirror
    indexes = [command[i + 1] for i, arg in enumerate(command) if arg in ("--index", "--default-index")]
    assert indexes == ["file:///mirror/a", "file:///mirror/b", "https://index.example/simple"]
    assert command[command.index("--index-strategy") + 1] == "unsafe-best-match"  # the best version, as pip
    assert [command[i + 1] for i, arg in enumerate(command) if arg == "--find-links"] == ["/env/wheels", "/h/more"]
    # pip's constraints bind what a build installs too
    assert command[command.index("--constraint") + 1] == command[command.index("--build-constraints") + 1]
    assert command[command.index("--constraint") + 1] == "/etc/constraints.txt"
    assert "--compile-bytecode" in command and command[-2:] == ["--editable", ".[test]"]
    assert env["SSL_CERT_FILE"] == str(cert) and env["UV_HTTP_TIMEOUT"] == "16"  # uv takes whole seconds
    offline, _ = install.uv_command(Path("/venv/bin/python"), {**options, "no-index": ["yes"]}, ".")
    assert "--no-index" in offline and "--index" not in offline and "--default-index" not in offline
    _, env = install.uv_command(Path("/venv/bin/python"), {"timeout": ["soon"]}, ".")
    assert "UV_HTTP_TIMEOUT" not in env or env["UV_HTTP_TIMEOUT"] == os.environ.get("UV_HTTP_TIMEOUT")
    _, env = install.uv_command(Path("/venv/bin/python"), {"cert": [str(tmp_path / "missing.pem")]}, ".")
    assert env.get("SSL_CERT_FILE") != str(tmp_path / "missing.pem")  # a certificate that is not there is not passed


def test_the_installer_refuses_a_folder_that_is_not_a_virtual_environment(tmp_path):
    """It makes a venv again where one lacks pip (clearing it): never in a folder that holds something else."""
    install = _installer()
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert "holds something other than a virtual environment" in install.make_venv(folder)
    assert (folder / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert "is a file" in install.make_venv(tmp_path / "file")
