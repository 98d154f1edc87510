"""Settings resolve as defaults < TOML < env < flags, and bad input is named."""

import pytest

from carbonwatch.config import load_settings
from carbonwatch.errors import ConfigError


def test_precedence_defaults_toml_env_flags(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('country = "FRA"\npue = 1.2\nenergy_price_per_kwh = 0.2\nport = 9000\n')
    s = load_settings(cfg, env={})
    assert (s.country, s.pue, s.energy_price_per_kwh, s.port, s.currency) == (
        "FRA",
        1.2,
        0.2,
        9000,
        "USD",
    )
    s = load_settings(cfg, env={"CARBONWATCH_PUE": "1.5", "CARBONWATCH_PORT": "9100"})
    assert (s.pue, s.port) == (1.5, 9100)
    s = load_settings(cfg, env={"CARBONWATCH_PUE": "1.5"}, flags={"pue": 1.1, "port": None})
    assert (s.pue, s.port) == (1.1, 9000)


def test_config_named_by_env(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[carbonwatch]\nidle_policy = "even"\n')
    assert load_settings(env={"CARBONWATCH_CONFIG": str(cfg)}).idle_policy == "even"


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_unreadable_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("pue = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg, env={})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CARBONWATCH_PUE": "abc"}, "pue"),
        ({"CARBONWATCH_PUE": "nan"}, "pue"),
        ({"CARBONWATCH_PUE": "0.5"}, "pue"),
        ({"CARBONWATCH_IDLE_POLICY": "greedy"}, "idle_policy"),
        ({"CARBONWATCH_ENERGY_PRICE_PER_KWH": "-1"}, "energy_price_per_kwh"),
    ],
)
def test_invalid_values_name_the_setting(env, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_settings(env={**env, "XDG_CONFIG_HOME": str(tmp_path)})
