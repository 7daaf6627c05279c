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
