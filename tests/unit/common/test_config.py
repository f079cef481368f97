import pytest

from common.config import ConfigError, RunConfig, TrainSettings


def test_defaults_validate_and_dash_names_round_trip():
    config = RunConfig.from_mapping({"sites": 3, "rounds": 2, "strategy": "fedprox", "learning-rate": 1})
    assert config.sites == 3 and config.learning_rate == 1.0
    assert RunConfig.from_mapping(config.to_dict()) == config


@pytest.mark.parametrize("raw, fragment", [
    ({"strategy": "fedsgd"}, "unknown strategy 'fedsgd'"),
    ({"rounds": -1}, "'rounds' is -1"),
    ({"sites": 2, "min-sites": 3}, "'min-sites' (3) exceeds 'sites' (2)"),
    ({"image-size": 8}, "'image-size' is 8"),
    ({"model-width": 6}, "'model-width' is 6 but must be a multiple of 4 from 4 to 32"),
    ({"model-width": 36}, "'model-width' is 36"),
    ({"rounds": "five"}, "'rounds' must be of type int"),
    ({"round": 3}, "unknown setting 'round'"),
    ({"fraction-evaluate": 1.5}, "'fraction-evaluate' is the share of sites"),
])
def test_bad_settings_name_the_setting_and_fix(raw, fragment):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping(raw)
    assert fragment in str(error.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({"strategy": "x", "rounds": 0, "batch-size": 0})
    assert len(error.value.problems) == 3


def test_train_settings_travel_as_a_record():
    settings = RunConfig(strategy="fedprox", proximal_mu=0.1).train_settings(4)
    record = settings.to_record()
    assert record["server-round"] == 4 and record["proximal-mu"] == 0.1
    assert TrainSettings.from_record(dict(record, extra=1)) == settings
    assert RunConfig(strategy="fedavg").train_settings(1).proximal_mu == 0.0


def test_every_setting_is_declared_in_pyproject_with_its_default():
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
    declared = declared["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_mapping(declared) == RunConfig()
    assert set(declared) == set(RunConfig().to_dict())


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum"])
def test_robust_strategy_under_secagg_names_the_conflict_and_the_fix(strategy):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({"strategy": strategy, "sites": 5})  # aggregation defaults to secagg+
    (problem,) = error.value.problems
    assert f"strategy '{strategy}'" in problem and "secagg+" in problem and "aggregation='plain'" in problem
    config = RunConfig.from_mapping({"strategy": strategy, "sites": 5, "aggregation": "plain"})
    assert config.strategy == strategy


@pytest.mark.parametrize("raw, fragment", [
    ({"strategy": "fedmedian", "client-dp": "fixed"}, "does not average"),
    ({"strategy": "fedtrimmedavg", "sites": 4, "trim-fraction": 0.2}, "trims nothing with 4 sites"),
    ({"trim-fraction": 0.5}, "'trim-fraction'"),
    ({"strategy": "krum", "sites": 4, "faulty-sites": 1}, "at least 5 sites"),
    ({"faulty-sites": -1}, "'faulty-sites'"),
])
def test_robust_strategy_settings_are_checked(raw, fragment):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({"aggregation": "plain", **raw})
    assert fragment in str(error.value)
