"""The config: shipped files are valid; errors name the field and the value; --set works."""

from pathlib import Path

import pytest

from vllm_autoscaler.config.loader import ConfigError, load_config, shipped_path
from vllm_autoscaler.controller.profile import ProfileError, load_profile, shipped_profiles

EXAMPLES = sorted(Path(shipped_path("examples")).glob("*.yaml"))


def test_examples_cover_the_three_setups():
    setups = {tuple(t.pools) for p in EXAMPLES for t in load_config(p).targets}
    assert setups == {("kubernetes",), ("modal",), ("kubernetes", "modal")}


@pytest.mark.parametrize("path", [shipped_path("default.yaml"), *EXAMPLES], ids=lambda p: p.name)
def test_shipped_configs_and_their_profiles_load(path):
    for target in load_config(path).targets:
        assert load_profile(target.profile).kv_cache_tokens > 0


def test_set_overrides_nested_values_and_list_items():
    config = load_config(overrides=["targets.0.slo.ttft_seconds=1.5", "tick_seconds=10",
                                    "targets.0.modal.enabled=false"])
    assert config.targets[0].slo.ttft_seconds == 1.5
    assert config.tick_seconds == 10
    assert config.targets[0].pools == ["kubernetes"]


@pytest.mark.parametrize(
    "override, names",
    [
        ("tick_seconds=abc", ["tick_seconds", "'abc'"]),
        ("targets.0.kubernetes.max_replicas=-2", ["targets.0.kubernetes.max_replicas", "-2"]),
        ("targets.0.slo.attainment=1.5", ["targets.0.slo.attainment", "1.5"]),
        ("targets.0.kubernetes.replicas_typo=3", ["targets.0.kubernetes.replicas_typo"]),
        ("targets.0.modal.scaledown_window_seconds=1", ["scaledown_window_seconds", "1"]),
    ],
)
def test_bad_values_name_the_field_and_the_value(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    for name in names:
        assert name in str(err.value)


def test_contradicting_bounds_and_no_pool_are_errors():
    with pytest.raises(ConfigError, match="min_replicas .5. > max_replicas .2."):
        load_config(overrides=["targets.0.kubernetes.min_replicas=5",
                               "targets.0.kubernetes.max_replicas=2"])
    with pytest.raises(ConfigError, match="at least one of kubernetes and modal"):
        load_config(overrides=["targets.0.kubernetes=null", "targets.0.modal.enabled=false"])


def test_bad_set_syntax_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(overrides=["tick_seconds"])
    with pytest.raises(ConfigError, match="targets.5 is not an index"):
        load_config(overrides=["targets.5.name=x"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_duplicate_target_names_are_rejected(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("targets:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        load_config(path)


def test_profiles_are_labelled_and_unknown_ones_are_named(tmp_path):
    for name in shipped_profiles():
        assert "estimate" in load_profile(name).source
    with pytest.raises(ProfileError, match="unknown replica profile 'h200'"):
        load_profile("h200")
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nmodel: m\ngpu: g\nsource: s\nkv_cache_tokens: -1\n")
    with pytest.raises(ProfileError, match="kv_cache_tokens"):
        load_profile(str(bad))
