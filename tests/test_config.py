"""The config loader: YAML -> frozen dataclasses, overrides, and errors that name the field and the fix."""

import dataclasses
import json
from typing import Literal

import pytest
from process_util import REPO

from q2rl.config import (ConfigError, canonical_json, config_differences, config_hash, describe, doc, from_dict,
                         load_config, to_dict)


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


# RFC 8785 appendix B: IEEE 754 bit patterns and their canonical JSON form (ECMAScript Number-to-string)
RFC8785_NUMBERS = [
    (0x0000000000000000, "0"), (0x8000000000000000, "0"), (0x0000000000000001, "5e-324"),
    (0x8000000000000001, "-5e-324"), (0x7FEFFFFFFFFFFFFF, "1.7976931348623157e+308"),
    (0xFFEFFFFFFFFFFFFF, "-1.7976931348623157e+308"), (0x4340000000000000, "9007199254740992"),
    (0xC340000000000000, "-9007199254740992"), (0x4430000000000000, "295147905179352830000"),
    (0x44B52D02C7E14AF5, "9.999999999999997e+22"), (0x44B52D02C7E14AF6, "1e+23"),
    (0x44B52D02C7E14AF7, "1.0000000000000001e+23"), (0x444B1AE4D6E2EF4E, "999999999999999700000"),
    (0x444B1AE4D6E2EF4F, "999999999999999900000"), (0x444B1AE4D6E2EF50, "1e+21"),
    (0x3EB0C6F7A0B5ED8C, "9.999999999999997e-7"), (0x3EB0C6F7A0B5ED8D, "0.000001"),
    (0x41B3DE4355555553, "333333333.3333332"), (0x41B3DE4355555554, "333333333.33333325"),
    (0x41B3DE4355555555, "333333333.3333333"), (0x41B3DE4355555556, "333333333.3333334"),
    (0x41B3DE4355555557, "333333333.33333343"), (0xBECBF647612F3696, "-0.0000033333333333333333"),
    (0x43143FF3C1CB0959, "1424953923781206.2"),
]


@pytest.mark.parametrize("bits, text", RFC8785_NUMBERS, ids=[t for _, t in RFC8785_NUMBERS])
def test_canonical_numbers_are_rfc8785_s(bits, text):
    import struct

    assert canonical_json(struct.unpack(">d", bits.to_bytes(8, "big"))[0]) == text.encode()


@pytest.mark.parametrize("value, text", [
    (1e-7, "1e-7"), (1e21, "1e+21"), (1e20, "100000000000000000000"), (0.000001, "0.000001"), (1.23e-7, "1.23e-7"),
    (333333333.3333333, "333333333.3333333"), (5e-324, "5e-324"), (-0.0, "0"), (100.0, "100"), (1.5, "1.5"),
    (0.1, "0.1"), (-2.5e30, "-2.5e+30"), (10, "10"), (-7, "-7"), (2**53, "9007199254740992"),
])
def test_canonical_numbers_are_ecmascript_s(value, text):
    assert canonical_json(value) == text.encode()


def test_canonical_json_is_rfc8785_s():
    # RFC 8785 section 3.2.2's example, and 3.2.3's key order (UTF-16 code units: the emoji before U+FB33)
    value = {"numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
             "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"/", "literals": [None, True, False]}
    assert canonical_json(value).decode() == (r'''{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,'''
                                              r'''4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}''')
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    in_order = list(json.loads(canonical_json({k: 0 for k in keys})))
    assert in_order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert canonical_json({"b": (1, 2.0), "a": {"y": "", "x": None}}) == b'{"a":{"x":null,"y":""},"b":[1,2]}'


@pytest.mark.parametrize("value, error", [
    (float("nan"), ValueError), (float("inf"), ValueError), ({"x": [-float("inf")]}, ValueError),
    (2**53 + 1, ValueError), ("\ud800", ValueError), ({1: "x"}, TypeError), ({"x": object()}, TypeError),
])
def test_canonical_json_refuses_what_has_no_canonical_form(value, error):
    with pytest.raises(error, match="canonical JSON"):
        canonical_json(value)


def test_config_differences_name_the_fields_in_canonical_form():
    ours = canonical_json({"env": {"sim": {"control_hz": 10, "task": "cube"}}, "agent": {"lr": 3e-4}, "bc": "ab"})
    theirs = '{"env": {"sim": {"control_hz": 20.0, "task": "cube", "new": [1, 2]}}, "agent": {"lr": 0.0003}, "bc": "cd"}'
    assert config_differences(ours, theirs) == [
        ("bc", '"ab"', '"cd"'), ("env.sim.control_hz", "10", "20"), ("env.sim.new", "absent", "[1,2]")]
    assert config_differences('{"a": true}', '{"a": 1}') == [("a", "true", "1")]


def test_describe_lists_every_leaf_with_help():
    lines = describe(Run)
    assert any(line.startswith("optim.lr (float, default 0.0003): learning rate") for line in lines)
    assert len(lines) == 6


def test_describe_names_an_optional_fields_type_in_full():
    from q2rl.core.agent_config import AgentConfig

    lines = describe(AgentConfig)
    assert any(line.startswith("image_encoder ('frozen_bc' | 'learned' | None, default None)") for line in lines)
    assert any(line.startswith("utd (int | None, default None)") for line in lines)


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


# ------------------------------------------------------------------------------------------ issue #35, part 5


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("agent.critic_lr=-0.001", "agent.critic_lr: -0.001 must be > 0"),
        ("agent.actor_lr=-0.001", "agent.actor_lr: -0.001 must be > 0"),
        ("agent.q_estimation.learning_rate=-0.0001", "agent.q_estimation.learning_rate: -0.0001 must be > 0"),
        ("agent.q_estimation.actor_learning_rate=0", "agent.q_estimation.actor_learning_rate: 0.0 must be > 0"),
        ("agent.q_estimation.batch_size=0", "agent.q_estimation.batch_size: 0 must be >= 1"),
        ("agent.init_temperature=.nan", "agent.init_temperature: nan must be > 0"),
        ("agent.value_hidden_dims=[64, 0]", "agent.value_hidden_dims"),
        ("agent.actor_log_std_min=3", "agent.actor_log_std_min: 3.0 must be below actor_log_std_max"),
        ("session.refresh_s=-1", "session.refresh_s: -1.0 must be > 0"),
        ("session.max_minutes=-5", "session.max_minutes: -5.0 must be >= 0"),
        ("learner.replay_capacity=-5", "learner.replay_capacity: -5 must be >= 1"),
        ("learner.actor_lost_after_s=0", "learner.actor_lost_after_s: 0.0 must be > 0"),
        ("learner.seed=-1", "learner.seed: -1 must be >= 0"),
        ("learner.keep_checkpoints=0", "learner.keep_checkpoints: 0 must be >= 1"),
        ("actor.flush_timeout_s=-1", "actor.flush_timeout_s: -1.0 must be >= 0"),
        ("bc.eval_episodes=-2", "bc.eval_episodes: -2 must be >= 0"),
        ("bc.train.grad_clip_norm=-1", "bc.train.grad_clip_norm: -1.0 must be >= 0"),
        ("bc.train.learning_rate=.nan", "bc.train.learning_rate: nan must be > 0"),
        ("env.sim.control_hz=.inf", "env.sim.control_hz: inf must be > 0"),
        ("env.franka.gripper.cooldown_s=.nan", "env.franka.gripper.cooldown_s"),
        ("env.franka.gripper.robotiq_baudrate=0", "env.franka.gripper.robotiq_baudrate: 0 must be >= 1"),
        ("env.franka.home_joints=[0, 0, 0, .nan, 0, 0, 0]", "env.franka.home_joints"),
    ],
)
def test_every_config_number_is_range_checked_and_the_error_names_the_field(tmp_path, override, fragment):
    from q2rl.run_config import RunConfig

    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, write(tmp_path, "env: {backend: sim}\n"), [override])
    assert fragment in str(err.value)
    assert "default" in str(err.value) or "must" in str(err.value)  # says what a valid value is


def test_a_bad_number_stops_the_learner_before_it_creates_a_run_directory(tmp_path, monkeypatch, capsys):
    """learner.replay_capacity=-5 used to pass the config, create runs/<name>/ and then fail with a traceback."""
    import signal

    from q2rl import cli

    monkeypatch.setattr(signal, "signal", lambda *a: None)
    config = write(tmp_path, f"learner: {{run_root: {tmp_path / 'runs'}, run_name: x}}\n"
                             f"bc: {{checkpoint: {tmp_path / 'policy.ckpt'}}}\n")
    assert cli.main(["learner", "--config", str(config), "learner.replay_capacity=-5"]) == 2
    assert "learner.replay_capacity: -5 must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_config_file_is_an_error_that_says_what_to_put_in_it(tmp_path, text):
    from q2rl.run_config import RunConfig

    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    assert str(path) in str(err.value) and "is empty" in str(err.value)
    assert load_config(RunConfig, write(tmp_path, "{}\n")) == load_config(RunConfig)  # defaults on purpose: {}


def test_demos_with_actions_other_than_7d_are_refused_for_bc_training(tmp_path):
    import numpy as np

    from q2rl.bc.config import BCConfig
    from q2rl.bc.train import train_bc
    from q2rl.core.policies import PolicyConfig
    from q2rl.demos.hdf5 import Demo, read_demos, write_demos

    rng = np.random.default_rng(0)
    demos = [Demo(states=rng.standard_normal((5, 4)).astype(np.float32),
                  actions=rng.uniform(-1, 1, (5, 6)).astype(np.float32), rewards=np.zeros(5, np.float32),
                  dones=np.eye(5, dtype=bool)[-1], success=True) for _ in range(3)]
    path = write_demos(tmp_path / "six.hdf5", demos, {"env_name": "x"})
    cfg = BCConfig(policy=PolicyConfig(kind="gaussian", hidden_dims=(8,)), steps=1, batch_size=4, val_fraction=0.0)
    with pytest.raises(ConfigError) as err:
        train_bc(read_demos(path), cfg, out_dir=tmp_path / "bc", progress=False)
    assert str(path) in str(err.value) and "6-D" in str(err.value) and "7" in str(err.value)
    assert not (tmp_path / "bc").exists()


# ------------------------------------------------------------------------------------------ issue #35, part 4: token


def test_the_token_comes_from_a_file_or_the_environment_and_is_never_written_to_config_yaml(tmp_path, monkeypatch):
    import argparse

    from q2rl.learner.cli import prepare_run
    from q2rl.run_config import RunConfig

    monkeypatch.delenv("Q2RL_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("  from-a-file\n")
    base = f"learner: {{run_root: {tmp_path / 'runs'}}}\nbc: {{checkpoint: {tmp_path / 'policy.ckpt'}}}\n"
    (tmp_path / "policy.ckpt").write_bytes(b"a run copies its pi_BC; the bytes do not matter here")
    config = write(tmp_path, base)
    assert load_config(RunConfig, config, [f"learner.token_file={token_file}"]).learner.token == "from-a-file"
    monkeypatch.setenv("Q2RL_TOKEN", "from-the-environment")
    assert load_config(RunConfig, config).learner.token == "from-the-environment"
    assert load_config(RunConfig, config, [f"learner.token_file={token_file}"]).learner.token == "from-a-file"
    with pytest.raises(ConfigError, match="learner.token_file: .*missing"):
        load_config(RunConfig, config, [f"learner.token_file={tmp_path / 'missing'}"])
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="learner.token_file: .* is empty"):
        load_config(RunConfig, config, [f"learner.token_file={tmp_path / 'empty'}"])
    with pytest.raises(ConfigError, match="token_file: give the token one way"):
        load_config(RunConfig, config, ["learner.token=inline", f"learner.token_file={token_file}"])
    # however it was given, the run's config.yaml (which every process of the run reads) does not hold it
    for i, overrides in enumerate([["learner.token=inline-secret"], [f"learner.token_file={token_file}"], []]):
        args = argparse.Namespace(resume=None, config=str(config), overrides=overrides + [f"learner.run_name=r{i}"])
        cfg, run_dir, _ = prepare_run(args)
        assert cfg.learner.token in ("inline-secret", "from-a-file", "from-the-environment")
        text = (run_dir / "config.yaml").read_text()
        assert cfg.learner.token not in text and "token:" not in text.replace("token_file:", ""), text
        assert cfg.learner.token not in repr(cfg)
        resumed = load_config(RunConfig, run_dir / "config.yaml")  # the actor's and --resume's view of the run
        assert resumed.learner.token == ("from-a-file" if i == 1 else "from-the-environment")


def test_batch_accounting_says_what_batch_size_counts():
    """`minibatch`: batch_size per critic minibatch (ours); `update`: per update call, split over utd (the authors')."""
    from q2rl.core.agent_config import AgentConfig

    ours = from_dict(AgentConfig, {"preset": "paper"})
    authors = from_dict(AgentConfig, {"preset": "paper", "batch_accounting": "update"})
    assert (ours.utd, ours.batch_size, ours.minibatch_size) == (4, 256, 256)
    assert (authors.utd, authors.batch_size, authors.minibatch_size) == (4, 256, 64)
    with pytest.raises(ConfigError, match="batch_size: 250 must split into utd=4 equal minibatches"):
        from_dict(AgentConfig, {"preset": "paper", "batch_size": 250, "batch_accounting": "update"}).validate()


# ------------------------------------------------------------------ one override syntax, errors in the argument


@pytest.mark.parametrize(
    "override, message",
    [
        ("agent.utdd=4", "argument 'agent.utdd=4': no field utdd in agent (did you mean utd?)"),
        ("agnt.utd=4", "argument 'agnt.utd=4': no section agnt (did you mean agent?)"),
        ("agent.utd=many", "argument 'agent.utd=many': agent.utd: expected an integer, got 'many'"),
        ("learner.replay_capacity=-5", "argument 'learner.replay_capacity=-5': learner.replay_capacity: -5 must be"),
        ("agent.utd", "argument 'agent.utd': expected the form section.field=value"),
        ("agent.utd=0", "argument 'agent.utd=0': agent.utd, batch_size and n_step must be >= 1"),
    ],
)
def test_a_command_line_typo_is_an_error_in_its_argument_not_in_the_yaml_file(tmp_path, override, message):
    from q2rl.config import OverrideError
    from q2rl.run_config import RunConfig

    path = write(tmp_path, "env: {backend: sim}\n")
    with pytest.raises(OverrideError) as err:
        load_config(RunConfig, path, [override])
    assert str(err.value).startswith(message)
    assert str(path) not in str(err.value)


def test_an_error_in_the_file_still_names_the_file_when_overrides_are_given(tmp_path):
    from q2rl.config import OverrideError

    path = write(tmp_path, "optim: {lr: -1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(Run, path, ["steps=3"])
    assert not isinstance(err.value, OverrideError) and str(path) in str(err.value)


def test_a_rule_across_fields_that_only_the_overrides_break_blames_the_command_line_not_the_file(tmp_path):
    from q2rl.config import OverrideError
    from q2rl.run_config import RunConfig

    path = write(tmp_path, "agent: {ensemble_size: 4, critic_subsample: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path, ["agent.ensemble_size=1"])
    message = str(err.value)
    assert not isinstance(err.value, OverrideError)  # the message names critic_subsample, which no argument set
    assert "critic_subsample: 2 must be in [1, ensemble_size=1]" in message
    assert f"from the command line: agent.ensemble_size=1; {path} alone is valid" in message


def test_a_sim_run_without_object_poses_must_see_through_cameras_and_so_must_the_pi_bc_trained_for_it(tmp_path):
    from q2rl.learner.bc_source import ensure_bc_policy
    from q2rl.run_config import RunConfig

    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, None, ["env.sim.privileged_state=false"])
    assert str(err.value).startswith("env.sim.cameras: empty") and "env.sim.cameras=[wrist, front]" in str(err.value)
    pixels = load_config(RunConfig, None, ["env.sim.privileged_state=false", "env.sim.cameras=[wrist]",
                                           f"bc.cache_root={tmp_path}"])
    with pytest.raises(ConfigError) as err:  # before any demo is recorded
        ensure_bc_policy(pixels, progress=False)
    assert str(err.value).startswith("bc.train.cameras: empty") and "bc.train.cameras=[wrist]" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def _cli(*argv):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "q2rl.cli", *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "argv, error",
    [
        (["session", "agent.utdd=4"], "q2rl session: argument 'agent.utdd=4': no field utdd in agent (did you mean utd?)"),
        (["bc", "train", "--demos", "x.hdf5", "--out", "o", "bc.train.stepz=3"],
         "q2rl bc train: argument 'bc.train.stepz=3': no field stepz in bc.train (did you mean steps?)"),
        (["demos", "scripted", "--out", "x.hdf5", "env.sim.max_episode_stepz=80"],
         "q2rl demos scripted: argument 'env.sim.max_episode_stepz=80': no field max_episode_stepz in env.sim "
         "(did you mean max_episode_steps?)"),
        (["demos", "record", "--config", "configs/sim/pick_cube.yaml", "--out", "x.hdf5", "env.sim.tsk=kitting"],
         None),  # needs a terminal first; checked below through its parser
    ],
)
def test_every_command_takes_overrides_as_plain_section_field_arguments(argv, error):
    if error is None:
        from q2rl.config import OverrideError, build_config
        from q2rl.run_config import EnvOnlyConfig

        with pytest.raises(OverrideError, match="no field tsk in env.sim"):
            build_config(EnvOnlyConfig, {}, ["env.sim.tsk=kitting"])
        return
    proc = _cli(*argv)
    assert proc.returncode == 2
    assert error in proc.stderr.splitlines(), proc.stderr


def test_the_old_set_form_still_works_for_one_release_and_says_the_new_one(tmp_path):
    from q2rl.bc.cli import load_bc_config
    from q2rl.run_config import deprecated_set

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        overrides = deprecated_set("q2rl bc train", ["bc.policy.kind=gmm", "steps=7", "bc.train.seed=3"], "bc.train",
                                   old_prefixes=("bc.",))
    assert overrides == ["bc.train.policy.kind=gmm", "bc.train.steps=7", "bc.train.seed=3"]
    notices = err.getvalue().splitlines()
    assert len(notices) == 3 and "write bc.train.policy.kind=gmm (a plain argument)" in notices[0]
    cfg = load_bc_config(None, overrides)
    assert (cfg.policy.kind, cfg.steps, cfg.seed) == ("gmm", 7, 3)
    proc = _cli("demos", "scripted", "--out", str(tmp_path / "x.hdf5"), "--set", "max_episode_steps=oops")
    assert "write env.sim.max_episode_steps=oops" in proc.stderr
    assert "argument 'env.sim.max_episode_steps=oops'" in proc.stderr


# ------------------------------------------------------------------ --help shows the sections that apply


def test_session_help_lists_the_sections_and_only_the_sim_backend_and_help_all_lists_every_field(tmp_path):
    proc = _cli("session", "--help")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert len(lines) <= 60, len(lines)
    assert not any("env.franka" in line for line in lines)
    assert any(line.strip().startswith("env.sim.task ") for line in lines)
    for section in ("bc", "agent", "learner", "actor", "session"):
        assert any(line.startswith(f"  {section} ") for line in lines), section
    assert "--help-all" in proc.stdout
    full = _cli("session", "--help-all").stdout
    assert "env.franka.robot_ip" in full and "agent.utd " in full and "session.env_steps " in full


def test_a_help_without_a_known_config_names_envs_backends_and_a_real_config_shows_franka_only(tmp_path):
    lines = _cli("learner", "--help").stdout.splitlines()
    assert len(lines) <= 60
    env = next(line for line in lines if line.startswith("  env "))
    assert "env.sim" in env and "env.franka" in env
    assert not any(line.startswith("  actor ") for line in lines)  # the learner does not read actor.*
    real = write(tmp_path, "env: {backend: franka}\n")
    lines = _cli("learner", "--config", str(real), "--help").stdout.splitlines()
    assert len(lines) <= 60, len(lines)
    assert any("env.franka.robot_ip " in line for line in lines)
    assert not any("env.sim." in line for line in lines)
    for argv in (["actor", "--help"], ["deploy", "--help"], ["bc", "train", "--help"], ["demos", "scripted", "--help"]):
        lines = _cli(*argv).stdout.splitlines()
        assert len(lines) <= 60 and "--help-all" in "\n".join(lines), argv


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")))
def test_every_shipped_config_loads_and_validates(path):
    """The presets a user starts from are valid as shipped; the pixel ones see through the cameras they name."""
    from q2rl.run_config import RunConfig

    cfg = load_config(RunConfig, REPO / path)
    cfg.validate()
    if "pixels" in path:
        assert cfg.env.sim.privileged_state is False and set(cfg.bc.train.cameras) == set(cfg.env.sim.cameras)
        assert cfg.agent.image_encoder == ("learned" if "paper" in path else "frozen_bc")
