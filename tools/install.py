"""Create a virtual environment and install the project into it: with uv where it can be had, with pip otherwise.

    python3 tools/install.py .venv '.[test]'        (what the Makefile runs; editable, as pip -e)

The install is mostly torch's CUDA build: about 6 GB of torch, triton and NVIDIA wheels to unpack. pip unpacks
them one after another (2 min 30 s on the two-core machine); uv unpacks in parallel (1 min 35 s, byte code
included). uv reads none of pip's configuration, so the package indexes, find-links, constraints, certificate
and timeout that pip is set up with (its files and PIP_* variables) are handed to it, and it looks for the best
version across all indexes as pip does; a version on several indexes is taken from pip's extra indexes first
(the local mirrors a machine points pip at) and from the default index last. Byte code is compiled at install,
as pip does: where PYTHONDONTWRITEBYTECODE is set nothing else caches it, and every process would compile torch's
modules again. Where uv cannot be installed, or fails, pip installs the project as before.
"""

import ast
import os
import subprocess
import sys
import venv
from collections.abc import Mapping
from pathlib import Path


def pip_options(listed: str, environ: Mapping[str, str]) -> dict[str, list[str]]:
    """pip's effective options from what ``pip config list`` prints and the environment: a PIP_* variable over the
    [install] section over [global], as pip reads them; a value is a whitespace-separated list."""
    layers: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():
        name, sep, value = line.partition("=")
        section, dot, key = name.rpartition(".")
        if sep and dot:
            layers.setdefault(key, {})[section] = ast.literal_eval(value)
    for key in ("index-url", "extra-index-url", "find-links", "constraint", "cert", "default-timeout"):
        env = environ.get("PIP_" + key.upper().replace("-", "_"))
        if env is not None:
            layers.setdefault(key, {})[":env:"] = env
    options = {}
    for key, by_section in layers.items():
        for section in (":env:", "install", "global"):
            if section in by_section:
                options[key] = by_section[section].split()
                break
    return options


def pip_configuration(python: Path) -> dict[str, list[str]]:
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    return pip_options(listed, os.environ)


def uv_command(python: Path, options: dict[str, list[str]], requirement: str) -> tuple[list[str], dict]:
    """uv's command line and environment for pip's ``options``."""
    command = [str(python.parent / "uv"), "pip", "install", "--quiet", "--python", str(python), "--compile-bytecode"]
    command += ["--index-strategy", "unsafe-best-match"]
    command += [arg for url in options.get("extra-index-url", []) for arg in ("--index", url)]
    command += [arg for url in options.get("index-url", [])[:1] for arg in ("--default-index", url)]
    command += [arg for link in options.get("find-links", []) for arg in ("--find-links", link)]
    command += [arg for path in options.get("constraint", []) for arg in ("--constraint", path)]
    env = dict(os.environ)
    if options.get("cert") and Path(options["cert"][0]).is_file():
        env["SSL_CERT_FILE"] = options["cert"][0]
    if options.get("default-timeout"):
        env["UV_HTTP_TIMEOUT"] = options["default-timeout"][0]
    return [*command, "--editable", requirement], env


def _last_line(result: subprocess.CompletedProcess) -> str:
    said = (result.stderr or result.stdout or "").splitlines()
    lines = [line for line in said if line.strip() and not line.startswith("WARNING: Location")]
    return lines[-1].strip() if lines else f"exit code {result.returncode}"


def install(venv_dir: Path, requirement: str) -> int:
    python = venv_dir / "bin" / "python"
    if not python.exists():
        venv.create(venv_dir, with_pip=True)
    quiet = ["-q", "--disable-pip-version-check"]
    got_uv = subprocess.run([python, "-m", "pip", "install", *quiet, "uv>=0.5"], capture_output=True, text=True)
    if got_uv.returncode == 0:
        command, env = uv_command(python, pip_configuration(python), requirement)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode == 0:
            return 0
        print(f"install: uv failed ({_last_line(result)}); installing with pip", file=sys.stderr)
    else:
        print(f"install: uv is not available ({_last_line(got_uv)}); installing with pip", file=sys.stderr)
    pip = [python, "-m", "pip", "install", *quiet, "--editable", requirement]
    result = subprocess.run(pip, capture_output=True, text=True)
    # pip warns of every local index that lacks a package; the rest of what it says is kept
    said = [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith("WARNING: Location")]
    print("\n".join(said), file=sys.stderr, end="\n" if said else "")
    return result.returncode


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 tools/install.py VENV REQUIREMENT   (e.g. .venv '.[test]')")
    sys.exit(install(Path(sys.argv[1]), sys.argv[2]))
