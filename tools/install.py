"""Create a virtual environment and install the project into it: with uv where it can be had, with pip otherwise.

    python3 tools/install.py .venv '.[test]'        (what the Makefile runs; editable, as pip -e)

The install is mostly torch's CUDA build: about 6 GB of torch, triton and NVIDIA wheels to unpack. pip unpacks
them one after another (2 min 30 s on the two-core machine); uv unpacks in parallel (1 to 1.75 min, byte code
included). uv reads none of pip's configuration, so the package indexes, find-links, constraints, certificate
and timeout that pip is set up with (its files and PIP_* variables) are handed to it, and it looks for the best
version across all indexes as pip does; a version on several indexes is taken from pip's extra indexes first
(the local mirrors a machine points pip at) and from the default index last. Byte code is compiled at install,
as pip does: where PYTHONDONTWRITEBYTECODE is set nothing else caches it, and every process would compile torch's
modules again. Where uv cannot be installed, or fails, pip installs the project as before.
"""

import ast
import math
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Mapping
from pathlib import Path

# pip's options that uv is given, by pip's names (a pip option answers to each of its long names)
OPTIONS = ("index-url", "extra-index-url", "no-index", "find-links", "constraint", "cert", "timeout")
ALIASES = {"default-timeout": "timeout"}


def pip_options(listed: str, environ: Mapping[str, str]) -> dict[str, list[str]]:
    """pip's effective options from what ``pip config list`` prints and the environment: a PIP_* variable over the
    [install] section over [global], as pip reads them; a value is a whitespace-separated list, and an empty value
    is no value (pip skips it)."""
    layers: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():
        name, sep, value = line.partition("=")
        section, dot, key = name.rpartition(".")
        if sep and dot and value[:1] in "'\"":  # pip prints each value as a Python string
            layers.setdefault(ALIASES.get(key, key), {})[section] = ast.literal_eval(value)
    for name, value in environ.items():
        key = name.removeprefix("PIP_").lower().replace("_", "-")
        if name.startswith("PIP_") and ALIASES.get(key, key) in OPTIONS:
            layers.setdefault(ALIASES.get(key, key), {})[":env:"] = value
    options = {}
    for key, by_section in layers.items():
        for section in (":env:", "install", "global"):
            if by_section.get(section, "").strip():
                options[key] = by_section[section].split()
                break
    return options


def pip_configuration(python: Path) -> dict[str, list[str]]:
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    return pip_options(listed, os.environ)


def uv_command(python: Path, options: dict[str, list[str]], requirement: str) -> tuple[list[str], dict]:
    """uv's command line and environment for pip's ``options`` (and nothing from uv's own configuration)."""
    command = [str(python.parent / "uv"), "pip", "install", "--quiet", "--no-config", "--python", str(python)]
    command += ["--compile-bytecode", "--index-strategy", "unsafe-best-match"]
    if options.get("no-index", ["no"])[0].lower() in ("1", "true", "yes", "on"):
        command += ["--no-index"]
    else:
        command += [arg for url in options.get("extra-index-url", []) for arg in ("--index", url)]
        command += [arg for url in options.get("index-url", [])[:1] for arg in ("--default-index", url)]
    links = [os.path.expanduser(link) for link in options.get("find-links", [])]
    command += [arg for link in links for arg in ("--find-links", link)]
    # pip's constraints bind the packages a build needs too; uv's --constraint binds the installed ones only
    constraints = [os.path.expanduser(path) for path in options.get("constraint", [])]
    command += [arg for path in constraints for flag in ("--constraint", "--build-constraints") for arg in (flag, path)]
    env = dict(os.environ)
    if options.get("cert") and Path(options["cert"][0]).is_file():
        env["SSL_CERT_FILE"] = options["cert"][0]
    timeout = options.get("timeout", [""])[0]
    if timeout.replace(".", "", 1).isdigit():  # whole seconds to uv; a timeout that is no number pip refuses itself
        env["UV_HTTP_TIMEOUT"] = str(math.ceil(float(timeout)))
    return [*command, "--editable", requirement], env


def _said(result: subprocess.CompletedProcess) -> list[str]:
    """What a command printed, less pip's warning for every local index that lacks a package."""
    said = (result.stdout + "\n" + result.stderr).splitlines()
    return [line for line in said if line.strip() and not line.startswith("WARNING: Location")]


def _last_line(result: subprocess.CompletedProcess) -> str:
    return (_said(result) or [f"exit code {result.returncode}"])[-1].strip()


def _has_pip(python: Path) -> bool:
    return python.exists() and subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0


def make_venv(venv_dir: Path) -> str | None:
    """A virtual environment with pip at ``venv_dir``, made again where one is there without pip (a make that
    failed half-way); the reason in one line where none can be made."""
    if _has_pip(venv_dir / "bin" / "python"):
        return None
    if venv_dir.is_dir() and any(venv_dir.iterdir()) and not (venv_dir / "pyvenv.cfg").is_file():
        return f"{venv_dir} is a folder that holds something other than a virtual environment: move it away"
    if venv_dir.exists() and not venv_dir.is_dir():
        return f"{venv_dir} is a file, not a virtual environment: move it away"
    try:
        venv.create(venv_dir, with_pip=True, clear=True)
    except (OSError, subprocess.CalledProcessError) as err:
        shutil.rmtree(venv_dir, ignore_errors=True)
        why = err.strerror if isinstance(err, OSError) else "ensurepip failed (Debian: apt-get install python3-venv)"
        return f"{sys.executable} cannot make a virtual environment with pip at {venv_dir}: {why}"
    return None


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    """``command``'s result; a program that cannot be started is a failed result, not an exception."""
    try:
        return subprocess.run(command, capture_output=True, text=True, **kwargs)
    except OSError as err:
        return subprocess.CompletedProcess(command, 127, "", f"{command[0]}: {err.strerror}")


def install(venv_dir: Path, requirement: str) -> int:
    refused = make_venv(venv_dir)
    if refused:
        print(f"install: {refused}", file=sys.stderr)
        return 2
    python = venv_dir / "bin" / "python"
    quiet = ["-q", "--disable-pip-version-check"]
    got_uv = _run([python, "-m", "pip", "install", *quiet, "uv>=0.5"])
    if got_uv.returncode == 0:
        command, env = uv_command(python, pip_configuration(python), requirement)
        result = _run(command, env=env)
        if result.returncode == 0:
            return 0
        print(f"install: uv failed ({_last_line(result)}); installing with pip", file=sys.stderr)
    else:
        print(f"install: uv is not available ({_last_line(got_uv)}); installing with pip", file=sys.stderr)
    result = _run([python, "-m", "pip", "install", *quiet, "--editable", requirement])
    if _said(result):
        print("\n".join(_said(result)), file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 tools/install.py VENV REQUIREMENT   (e.g. .venv '.[test]')")
    sys.exit(install(Path(sys.argv[1]), sys.argv[2]))
