import pytest

from ppl_vae.config import Config, load_config, to_toml
from ppl_vae.errors import UserError


def test_toml_round_trip(tmp_path):
    config = Config()
    config.model.sigma = 0.25
    config.guide.name = "iaf"
    config.data.name = 'odd "name".npz'
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    "text,message",
    [
        ("[model]\nsigmaa = 1.0\n", "unknown key"),
        ("[modle]\nsigma = 1.0\n", "unknown config section"),
        ("[model]\nsigma = 'big'\n", "must be of type float"),
        ("[train]\nepochs = 1.5\n", "must be of type int"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("model", "sigma", 0.0),
        ("model", "sigma", float("nan")),
        ("train", "epochs", 0),
        ("train", "lr", -1.0),
        ("data", "test_fraction", 1.0),
    ],
)
def test_validate_numbers(section, key, value):
    config = Config()
    setattr(getattr(config, section), key, value)
    with pytest.raises(UserError):
        config.validate()


# --- every option is defined once, and every surface accepts it ----------------------------------

from ppl_vae.cli import build_parser, config_from_args, eval_config_from_args  # noqa: E402
from ppl_vae.config import SECTIONS, EvalConfig, flag_of, options_of, resolve_key  # noqa: E402
from ppl_vae.studies.compare import variants_from  # noqa: E402


def _other_value(section: str, name: str, kind: type, opt) -> object:
    """A valid value of the field that differs from its default."""
    default = getattr((SECTIONS.get(section) or EvalConfig)(), name)
    if kind is bool:
        return not default
    if opt.names is not None:
        return next(n for n in opt.names() if n != default)
    if kind is str:
        return {"program": "x.py:make", "count": "all"}.get(opt.also, "some/folder")
    if kind is int:
        return default + 1
    return default * 0.5 if default > 0 else 1e-4


def _text(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


ALL_FIELDS = [(s, n, k, o) for s, cls in SECTIONS.items() for n, k, o in options_of(cls)]
EVAL_FIELDS = [("evaluate", n, k, o) for n, k, o in options_of(EvalConfig)]


def test_every_option_has_exactly_one_flag_and_help():
    flags = [flag_of(n, o) for _, n, _, o in ALL_FIELDS + EVAL_FIELDS]
    assert len(flags) == len(set(flags)), "two options share a flag"
    fit_help = build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    for section, name, _, opt in ALL_FIELDS:
        assert flag_of(name, opt) in fit_help and opt.help.split()[0] in fit_help, (section, name)


@pytest.mark.parametrize("section,name,kind,opt", ALL_FIELDS, ids=[f"{s}.{n}" for s, n, _, _ in ALL_FIELDS])
def test_the_command_line_and_the_grid_set_every_config_option(section, name, kind, opt):
    value = _other_value(section, name, kind, opt)
    flag = flag_of(name, opt)
    argv = [f"--{'' if value else 'no-'}{flag[2:]}"] if kind is bool else [flag, _text(value)]
    args = build_parser().parse_args(["fit", "--out", "r", *argv])
    assert getattr(getattr(config_from_args(args), section), name) == value
    for key in (f"{section}.{name}", flag[2:]):
        assert resolve_key(key) == (section, name)
        (config,) = variants_from(Config(), grid=f"{key}={_text(value)}").values()
        assert getattr(getattr(config, section), name) == value, key


@pytest.mark.parametrize("section,name,kind,opt", EVAL_FIELDS, ids=[n for _, n, _, _ in EVAL_FIELDS])
def test_the_command_line_sets_every_evaluation_option(section, name, kind, opt):
    value = _other_value(section, name, kind, opt)
    for command in (["evaluate", "run"], ["compare", "--out", "o"], ["sigma-sweep", "--out", "o"]):
        args = build_parser().parse_args([*command, flag_of(name, opt), _text(value)])
        assert getattr(eval_config_from_args(args), name) == value, command


def test_grid_booleans_are_parsed_not_truth_tested():
    (on,) = variants_from(Config(), grid="binarize=on").values()
    (off,) = variants_from(Config(), grid="data.binarize=off").values()
    assert on.data.binarize is True and off.data.binarize is False
    with pytest.raises(UserError, match="must be of type bool"):
        variants_from(Config(), grid="binarize=maybe")


def test_compile_is_a_switch_on_every_surface(tmp_path):
    """auto | on | off: --compile, --no-compile, --compile auto, the grid, and old TOML booleans."""
    parse = lambda *a: config_from_args(build_parser().parse_args(["fit", "--out", "r", *a])).train.compile
    assert (parse(), parse("--compile"), parse("--no-compile"), parse("--compile", "auto")) == (
        "auto",
        "on",
        "off",
        "auto",
    )
    (grid,) = variants_from(Config(), grid="compile=off").values()
    assert grid.train.compile == "off"
    path = tmp_path / "c.toml"
    path.write_text("[train]\ncompile = true\n")
    assert load_config(path).validate().train.compile == "on"
    with pytest.raises(UserError, match="unknown compile 'maybe'"):
        variants_from(Config(), grid="compile=maybe")


def test_unknown_names_are_refused_before_any_variant_is_built():
    with pytest.raises(UserError, match="unknown guide .iaff."):
        variants_from(Config(), grid="guide=diagonal,iaff")
    with pytest.raises(UserError, match="likelihood"):
        variants_from(Config(), grid="likelihood=gaussian")


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("guide", "name", "iaf"),
        ("model", "prior", "mog"),
        ("model", "likelihood", "bernoulli"),
        ("model", "sigma", 0.3),
    ],
)
def test_a_built_in_choice_a_user_program_would_not_use_is_refused(section, key, value):
    """A user's model brings its own guide, prior and likelihood: a built-in one named beside it would go unused."""
    config = Config()
    config.model.program = "mine.py:make"
    setattr(getattr(config, section), key, value)
    flag = {"name": "guide"}.get(key, key)
    with pytest.raises(UserError, match=rf"^--{flag} {value} would not be used: the program mine\.py:make brings"):
        config.validate()
    config.guide.name = "theirs.py:make"  # a guide program beside it is the user's own, and allowed
    if key != "name":
        setattr(getattr(config, section), key, getattr(type(getattr(config, section))(), key))
    assert config.validate() is config


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("train", "seed", -1, r"--seed \(train\.seed\) must lie in"),
        ("train", "seed", 2**40, r"--seed \(train\.seed\) must lie in"),
        ("train", "particles", 10**9, r"--particles \(train\.particles\) must lie in"),
        ("model", "latent_dim", 10**12, r"--latent-dim \(model\.latent_dim\) must lie in"),
        ("train", "device", "tpu", "unknown device"),
        ("model", "program", "mine.py", "must look like path/to/file.py:factory"),
        ("train", "lr", float("inf"), "finite"),
    ],
)
def test_numbers_and_names_out_of_range(section, key, value, message):
    config = Config()
    setattr(getattr(config, section), key, value)
    with pytest.raises(UserError, match=message):
        config.validate()


def test_the_names_config_checks_are_the_registries_names():
    """ppl_vae.names lists each registry's keys without torch; a registry entry without its name here fails."""
    import importlib

    from ppl_vae.names import REGISTRIES

    for where, listed in REGISTRIES.items():
        module, _, attr = where.partition(":")
        assert tuple(getattr(importlib.import_module(module), attr)) == listed, where


def test_the_config_imports_no_torch():
    """Building the parser reads the config: it must not pay torch's import."""
    import subprocess
    import sys

    heavy = "{'torch', 'pyro', 'numpy'}"
    code = f"import sys, ppl_vae.cli; ppl_vae.cli.build_parser(); print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_misspelt_config_attribute_is_refused_with_the_option_meant():
    config = Config()
    with pytest.raises(
        AttributeError, match=r"ModelConfig has no option 'latent_dimz' \(did you mean 'latent_dim'\?\)"
    ):
        config.model.latent_dimz = 3
    with pytest.raises(AttributeError, match="TrainConfig has no option"):
        config.train.learning_rate = 0.1
    config.model.latent_dim = 3  # the options themselves are set as before
    assert config.validate().model.latent_dim == 3


def test_an_unknown_name_suggests_the_nearest():
    config = Config()
    config.guide.name = "diagonl"
    with pytest.raises(UserError, match=r"unknown guide 'diagonl' \(did you mean 'diagonal'\?\)"):
        config.validate()
    config.model.sigma = -1.0
    with pytest.raises(UserError, match=r"^--sigma \(model\.sigma\) must lie in"):  # the flag the user typed
        Config(model=config.model).validate()


def test_a_config_with_a_newline_and_quotes_in_a_path_round_trips_through_toml(tmp_path):
    from ppl_vae.config import load_config, to_toml

    config = Config()
    config.data.root = 'a "quoted"\nfolder\\with\ttabs'
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config))
    assert load_config(path).data.root == config.data.root


@pytest.mark.parametrize(
    "protocol,section",
    [("ppl_vae.inference.trainer:TrainSettings", "train"), ("ppl_vae.data.datasets:DataSpec", "data")],
    ids=["trainer", "data"],
)
def test_a_config_section_is_what_the_layer_below_reads(protocol, section):
    """The trainer and the data loaders read their section through a Protocol instead of importing the config:
    every attribute the Protocol names is an option of the section, with the option's type."""
    import importlib
    import typing

    from ppl_vae.config import SECTIONS

    module, _, name = protocol.partition(":")
    wanted = typing.get_type_hints(getattr(importlib.import_module(module), name))
    has = typing.get_type_hints(SECTIONS[section])
    assert wanted and {k: has.get(k) for k in wanted} == wanted


def test_no_lower_layer_imports_the_config():
    """data/, inference/ and storage/ sit below the config (layer 2): none imports it, not even for types."""
    import ast
    from pathlib import Path

    import ppl_vae

    root = Path(ppl_vae.__file__).parent
    found = []
    for layer in ("data", "inference", "storage"):
        for path in sorted((root / layer).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):  # from ..config import X is ppl_vae.config
                    package = "ppl_vae." if node.level == 2 else f"ppl_vae.{layer}." if node.level == 1 else ""
                    modules = [package + (node.module or "")] + [f"{package}{a.name}" for a in node.names]
                else:
                    continue
                if any(m == "ppl_vae.config" or m.startswith("ppl_vae.config.") for m in modules):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found
