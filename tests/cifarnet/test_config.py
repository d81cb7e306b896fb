"""Run configs: wrong types, out-of-range values and unreadable files are one ConfigError, never a crash later."""

from __future__ import annotations

import pytest

from cifarnet.config import MAX_WIDTH, SEED_LIMIT, TrainConfig, load_run_file, to_toml
from cifarnet.errors import ConfigError


@pytest.mark.parametrize("values, message", [
    ({"lr": "x"}, "lr must be a number, got 'x'"),
    ({"epochs": 2.0}, "epochs must be an integer"),
    ({"tta_flip": 1}, "tta_flip must be true or false"),
    ({"model": "abc"}, "model must be a table"),
    ({"model": {"widths": "abcd"}}, "model.widths must be a list of integers"),
    ({"model": {"widths": [4, 8, 8, True]}}, "model.widths must be a list of integers"),
    ({"model": {"widths": [4, 8, 8, MAX_WIDTH + 1]}}, f"model.widths must be 4 integers in 1..{MAX_WIDTH}"),
    ({"seed": SEED_LIMIT}, "seed out of range"),
    ({"lr": float("nan")}, "lr out of range"),
    ({"momentum": float("nan")}, "momentum out of range"),
    ({"epochs": 10**9}, "epochs out of range"),
])
def test_bad_values_are_config_errors(values, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values)
    assert message in str(err.value)


def test_every_config_round_trips_through_dict_and_toml(tmp_path):
    cfg = TrainConfig(flip_p=0.25, seed=SEED_LIMIT - 1)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "run.toml").write_text(to_toml(cfg))
    assert load_run_file(tmp_path / "run.toml")[0] == cfg


@pytest.mark.parametrize("content, message", [
    (b'[data]\nval_size = "a"\n', "data.val_size must be an integer"),
    (b"data = 3\n", "data must be a [data] table"),
    (bytes(range(256)), "is not a TOML file"),
    (b"a = " + b"[" * 5000, "is not a TOML file"),
])
def test_bad_run_files_are_config_errors(tmp_path, content, message):
    path = tmp_path / "run.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="run.toml") as err:
        load_run_file(path)
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_run_file(tmp_path)  # a directory
