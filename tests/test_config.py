"""The config loader: YAML -> frozen dataclasses, overrides, and errors that name the field and the fix."""

import dataclasses
from typing import Literal

import pytest

from q2rl.config import ConfigError, config_hash, describe, doc, load_config, to_dict


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = doc(3e-4, "learning rate")
    betas: tuple[float, float] = doc((0.9, 0.999), "Adam betas")

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}; use e.g. 3e-4")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str = doc("run", "run name")
    kind: Literal["gaussian", "gmm"] = doc("gaussian", "policy class")
    steps: int = doc(100, "training steps")
    optim: Optim = doc(Optim(), "optimiser")
    cameras: tuple[str, ...] = doc((), "camera names")


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_loads_nested_sections_and_converts_types(tmp_path):
    cfg = load_config(Run, write(tmp_path, "steps: 5\noptim: {lr: 1, betas: [0.5, 0.6]}\ncameras: [wrist]\n"))
    assert cfg.steps == 5
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.5, 0.6)
    assert cfg.cameras == ("wrist",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3  # type: ignore[misc]


def test_overrides_win_over_the_file(tmp_path):
    cfg = load_config(Run, write(tmp_path, "steps: 5\n"), overrides=["steps=7", "optim.lr=0.1", "kind=gmm"])
    assert (cfg.steps, cfg.optim.lr, cfg.kind) == (7, 0.1, "gmm")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("stepz: 5\n", "unknown field(s) 'stepz'"),
        ("optim: {lr: fast}\n", "optim.lr: expected a number"),
        ("optim: {lr: -1}\n", "optim.lr: must be > 0"),
        ("kind: transformer\n", "kind: 'transformer' is not one of 'gaussian' | 'gmm'"),
        ("steps: 2.5\n", "steps: expected an integer"),
        ("optim: {betas: [0.9]}\n", "optim.betas: expected 2 values"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("steps: [\n", "not valid YAML"),
    ],
)
def test_bad_input_names_the_field(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(Run, path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")


def test_hash_is_stable_and_sensitive():
    a, b = Run(), Run(steps=101)
    assert config_hash(a) == config_hash(Run())
    assert config_hash(a) != config_hash(b)
    assert to_dict(a)["optim"]["betas"] == [0.9, 0.999]


def test_describe_lists_every_leaf_with_help():
    lines = describe(Run)
    assert any(line.startswith("optim.lr (float, default 0.0003): learning rate") for line in lines)
    assert len(lines) == 6


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("agent: {random_steps: -3}\n", "agent.random_steps: -3 must be >= 0"),
        ("agent: {algo: td3}\n", "agent.algo: 'td3' is not one of"),
        ("agent: {critic_subsample: 9, ensemble_size: 4}\n", "critic_subsample: 9 must be in [1, ensemble_size=4]"),
        ("agent: {q_estimation: {alpha: -1}}\n", "agent.q_estimation.alpha: -1.0 must be >= 0"),
        ("agent: {bc_weight: 1.5}\n", "agent.bc_weight: 1.5 must be in [0, 1]"),
    ],
)
def test_the_run_configs_agent_section_is_validated(tmp_path, text, fragment):
    from q2rl.run_config import RunConfig

    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, write(tmp_path, text))
    assert fragment in str(err.value)


def test_an_agent_config_dumped_and_loaded_again_is_the_same_config(tmp_path):
    """Every algorithm's rules are resolved when the config is built, so resolving the dump changes nothing."""
    from q2rl.config import dump_yaml, from_dict
    from q2rl.core.agent_config import ALGO_RULES, ALGOS, AgentConfig

    assert tuple(ALGO_RULES) == ALGOS  # one row per algorithm the config accepts
    for algo in ALGOS:
        cfg = from_dict(AgentConfig, {"algo": algo})
        dump_yaml(cfg, tmp_path / f"{algo}.yaml")
        again = load_config(AgentConfig, tmp_path / f"{algo}.yaml")
        assert again == cfg, algo
        assert to_dict(again) == to_dict(cfg), algo
        assert cfg.bootstrap in ("rl", "max_rl_bc") and isinstance(cfg.entropy, bool), algo


def test_an_rlpd_run_config_yaml_says_what_the_run_uses(tmp_path):
    """rlpd is SAC with entropy and 50/50 demo sampling: config.yaml says so, and a false there is an error."""
    import yaml

    from q2rl.config import dump_yaml
    from q2rl.run_config import RunConfig

    cfg = load_config(RunConfig, write(tmp_path, "agent: {algo: rlpd}\n"))
    dump_yaml(cfg, tmp_path / "config.yaml")
    agent = yaml.safe_load((tmp_path / "config.yaml").read_text())["agent"]
    assert (agent["entropy"], agent["use_demos"], agent["bootstrap"], agent["bc_weight"]) == (True, True, "rl", 0.0)
    assert load_config(RunConfig, tmp_path / "config.yaml") == cfg
    with pytest.raises(ConfigError, match="entropy: false, but rlpd is SAC with entropy"):
        load_config(RunConfig, write(tmp_path, "agent: {algo: rlpd, entropy: false}\n"))


@pytest.mark.parametrize("algo, bootstrap", [("q2rl", "rl"), ("ibrl", "max_rl_bc"), ("rlpd", "rl")])
def test_an_old_config_yaml_with_bootstrap_auto_still_loads(tmp_path, algo, bootstrap):
    """config.yaml files written before the resolution say `bootstrap: auto` and, for rlpd, `entropy: false` and
    `use_demos: false`, which that run did not use: they load as the config the run used."""
    from q2rl.config import from_dict
    from q2rl.core.agent_config import AgentConfig
    from q2rl.run_config import RunConfig

    old = f"agent: {{algo: {algo}, bootstrap: auto, entropy: false, use_demos: false}}\n"
    agent = load_config(RunConfig, write(tmp_path, old)).agent
    assert agent == from_dict(AgentConfig, {"algo": algo})
    assert (agent.bootstrap, agent.entropy, agent.use_demos) == (bootstrap, algo == "rlpd", algo == "rlpd")
