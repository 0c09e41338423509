"""The real-robot environment: action -> target math by hand, the Robotiq Modbus framing over a pty, and the
real franky library driving franky-sim (a simulated FR3 behind the libfranka protocol on loopback).

Only the robot itself is simulated: franky, libfranka, the network protocol and our env are the real ones.
Faults and a Panda's version answer are produced on the simulator's side of the protocol.
"""

from __future__ import annotations

import math
import os
import pty
import struct
import threading
import time

import numpy as np
import pytest

from q2rl.config import ConfigError, from_dict
from q2rl.robot.franka import (
    OperatorSignals,
    RobotTimeoutError,
    SafetyLimits,
    _TimedCaller,
    action_to_delta,
    align_quat,
    clip_orientation,
    compute_target,
    rpy_to_quat,
    validate_action,
    version_mismatch_advice,
)
from q2rl.robot.gripper import (
    GripperCommandFilter,
    RobotiqGripper,
    SerialPort,
    modbus_crc16,
    read_input_registers_frame,
    robotiq_position_to_width,
    width_to_robotiq_position,
    write_registers_frame,
)
from q2rl.robot.real_config import FrankaEnvConfig, GripperConfig

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # Rx(pi): the gripper pointing down, [x, y, z, w]


def limits(**overrides) -> SafetyLimits:
    base = dict(
        scale_translation=0.02,
        scale_rotation=0.1,
        max_step_translation=0.03,
        max_step_rotation=0.15,
        workspace_low=np.array([0.35, -0.2, 0.05]),
        workspace_high=np.array([0.7, 0.2, 0.45]),
        home_quat=DOWN,
        orientation_limit=np.array([0.3, 0.3, 0.6]),
    )
    base.update(overrides)
    return SafetyLimits(**base)


# ---------------------------------------------------------------------------------------------------------------
# action -> target math


def test_validate_action_rejects_nan_and_wrong_shape_and_clips():
    with pytest.raises(ValueError, match="NaN"):
        validate_action([0, 0, np.nan, 0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        validate_action(np.zeros(6))
    np.testing.assert_array_equal(validate_action([2, -3, 0.5, 0, 0, 0, 1]), [1, -1, 0.5, 0, 0, 0, 1])


def test_translation_is_scaled_then_bounded_by_the_step_limit():
    t, r, bounded = action_to_delta(np.array([0.5, 0, -0.25, 0, 0, 0, 0]), limits())
    np.testing.assert_allclose(t, [0.01, 0, -0.005])  # 0.5 * 0.02, -0.25 * 0.02
    assert not bounded
    # (1, 1, 1) * 0.02 has length 0.0346 > 0.03: scaled to 0.03, i.e. 0.03 / sqrt(3) per axis.
    t, _, bounded = action_to_delta(np.array([1, 1, 1, 0, 0, 0, 0.0]), limits())
    np.testing.assert_allclose(t, [0.03 / math.sqrt(3)] * 3)
    assert bounded
    _, r, bounded = action_to_delta(np.array([0, 0, 0, 1, 1, 1, 0.0]), limits(max_step_rotation=0.1))
    np.testing.assert_allclose(r, [0.1 / math.sqrt(3)] * 3)


def test_target_is_measured_pose_plus_delta_as_absolute_pose():
    target = compute_target(np.array([1, 0, -0.5, 0, 0, 0, 0.0]), np.array([0.5, 0.0, 0.3]), DOWN, limits())
    np.testing.assert_allclose(target.position, [0.52, 0.0, 0.29])
    np.testing.assert_allclose(target.quat, DOWN, atol=1e-12)
    assert not target.clipped


def test_yaw_delta_rotates_about_the_base_z_axis():
    # Rz(0.1) * Rx(pi): with q1 = (0, 0, s, c), q2 = (1, 0, 0, 0): w = 0, v = c*(1,0,0) + (0,0,s)x(1,0,0) = (c, s, 0)
    # where c = cos(0.05), s = sin(0.05).
    target = compute_target(np.array([0, 0, 0, 0, 0, 1, 0.0]), np.array([0.5, 0.0, 0.3]), DOWN, limits())
    np.testing.assert_allclose(target.quat, [math.cos(0.05), math.sin(0.05), 0, 0], atol=1e-12)


def test_workspace_box_clips_the_target():
    target = compute_target(np.array([1, 0, -1, 0, 0, 0, 0.0]), np.array([0.69, 0.0, 0.06]), DOWN, limits())
    # x: 0.69 + 0.02 -> 0.7 (box), z: 0.06 - 0.02 -> 0.05 (box)
    np.testing.assert_allclose(target.position, [0.7, 0.0, 0.05])
    assert target.clipped


def test_orientation_limit_clips_rotation_away_from_home():
    # Measured: yaw 0.55 away from home; +0.1 would make 0.65 > limit 0.6 -> yaw 0.6, quat (cos 0.3, sin 0.3, 0, 0).
    measured = np.array([math.cos(0.275), math.sin(0.275), 0.0, 0.0])
    target = compute_target(np.array([0, 0, 0, 0, 0, 1, 0.0]), np.array([0.5, 0.0, 0.3]), measured, limits())
    np.testing.assert_allclose(target.quat, [math.cos(0.3), math.sin(0.3), 0, 0], atol=1e-12)
    assert target.clipped
    unchanged, clipped = clip_orientation(measured, DOWN, np.array([0.3, 0.3, 0.6]))
    assert not clipped and np.array_equal(unchanged, measured)


def test_quaternion_sign_follows_the_reference():
    np.testing.assert_array_equal(align_quat(-DOWN, DOWN), DOWN)
    np.testing.assert_allclose(rpy_to_quat((math.pi, 0, 0)), DOWN, atol=1e-12)


def test_version_mismatch_names_the_wheel_to_install():
    text = version_mismatch_advice(
        "libfranka: Incompatible library version (server version: 5, library version: 10). Please check ..."
    )
    assert "by-robot-server-version/5/" in text and "libfranka 0.9.2" in text and "Panda" in text
    assert "by-robot-server-version/9/" in version_mismatch_advice("(server version: 9, library version: 10)")


def test_timed_caller_times_out_and_then_refuses():
    call = _TimedCaller("test")
    assert call(lambda: 41 + 1, 1.0, "quick") == 42
    release = threading.Event()
    with pytest.raises(RobotTimeoutError, match="hang did not return within 0.05 s"):
        call(release.wait, 0.05, "hang")
    with pytest.raises(RobotTimeoutError, match="link is down"):
        call(lambda: 1, 1.0, "next")
    release.set()
    call.shutdown()


def test_gripper_filter_moves_only_on_change_and_after_cooldown():
    now = [0.0]
    f = GripperCommandFilter(close_threshold=0.5, cooldown_s=1.0, clock=lambda: now[0])
    f.reset("open")  # t = 0
    now[0] = 0.5
    assert f.decide(0.9) is None  # cooling down since the reset
    now[0] = 1.2
    assert f.decide(0.3) is None  # dead band
    assert f.decide(0.9) == "close"
    assert f.decide(0.9) is None  # no change
    now[0] = 1.5
    assert f.decide(-0.9) is None  # change, but within the cooldown
    now[0] = 2.3
    assert f.decide(-0.9) == "open"


def test_operator_signals_are_taken_once():
    s = OperatorSignals()
    assert s.take() is None
    s.mark_failure()
    s.mark_success()  # the later key wins
    assert s.take() == "success" and s.take() is None


def test_config_errors_name_the_field_and_fix():
    with pytest.raises(ConfigError, match="home_position: .* outside the workspace box"):
        from_dict(FrankaEnvConfig, {"home_position": [0.9, 0.0, 0.3]})
    with pytest.raises(ConfigError, match="cameras.*serial: required"):
        from_dict(FrankaEnvConfig, {"cameras": [{"name": "wrist"}]})
    with pytest.raises(ConfigError, match="state_keys"):
        from_dict(FrankaEnvConfig, {"state_keys": ["ee_pos", "elbow"]})
    with pytest.raises(ConfigError, match="impedance.translational_stiffness"):
        from_dict(FrankaEnvConfig, {"impedance": {"translational_stiffness": -1}})
    assert from_dict(FrankaEnvConfig, {}).state_dim == 10  # 3 + 6 + 1, the simulator's layout


@pytest.mark.parametrize("task", ["peg_insertion", "pipe_assembly", "kitting"])
def test_real_task_configs_load_and_validate(task):
    from pathlib import Path

    from q2rl.robot.real_config import load_franka_env_config

    path = Path(__file__).resolve().parents[1] / "configs" / "real" / f"{task}.yaml"
    cfg = load_franka_env_config(path)
    assert cfg.task == task and cfg.gripper.kind == "robotiq" and [c.name for c in cfg.cameras] == ["wrist", "front"]
    assert cfg.control_mode == "impedance" and cfg.state_dim == 10
    with pytest.raises(ConfigError, match=r"env\.franka\.workspace_low/workspace_high: axis x"):
        load_franka_env_config(path, ["env.franka.workspace_low=[0.9, -0.1, 0.0]"])


def test_every_config_field_has_help():
    from q2rl.config import describe

    lines = describe(FrankaEnvConfig)
    assert len(lines) > 40 and all(line.split(": ", 1)[1].strip() for line in lines)


# ---------------------------------------------------------------------------------------------------------------
# Robotiq 2F-85: real Modbus RTU frames over a pseudo-terminal, a fake gripper on the other end.


def test_modbus_frames_match_the_robotiq_manual():
    # Examples printed in the Robotiq 2F-85 manual (Modbus RTU section).
    assert write_registers_frame(9, 0x03E8, bytes(6)).hex() == "091003e80003060000000000007330"
    assert write_registers_frame(9, 0x03E8, bytes([9, 0, 0, 255, 255, 255])).hex() == "091003e8000306090000ffffff4229"
    assert read_input_registers_frame(9, 0x07D0, 3).hex() == "090407d00003b1ce"
    assert width_to_robotiq_position(0.085) == 0 and width_to_robotiq_position(0.0) == 255
    assert robotiq_position_to_width(0) == pytest.approx(0.085)


class FakeRobotiq(threading.Thread):
    """Answers Modbus requests on the master side of a pty like a 2F-85 whose fingers jump to the request."""

    def __init__(self, fd: int):
        super().__init__(daemon=True)
        self.fd, self.requests, self.position, self.activated = fd, [], 0, False
        self.stop = threading.Event()

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n and not self.stop.is_set():
            try:
                out += os.read(self.fd, n - len(out))
            except OSError:
                return b""
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            head = self._read(2)
            if len(head) < 2:
                return
            if head[1] == 0x10:
                rest = self._read(5)
                body = self._read(rest[4] + 2)
                frame = head + rest + body
                assert modbus_crc16(frame[:-2]) == struct.unpack("<H", frame[-2:])[0]
                payload = body[:-2]
                self.requests.append(payload)
                self.activated = bool(payload[0] & 1)
                self.position = payload[3]
                reply = frame[:6]
            else:
                frame = head + self._read(6)
                status = (0x31 if self.activated else 0) | (0xC0 if self.activated else 0)  # gACT, gSTA=3, gOBJ=3
                data = bytes([status, 0, 0, self.position, self.position, 0])
                reply = frame[:2] + bytes([6]) + data
            reply += struct.pack("<H", modbus_crc16(reply))
            os.write(self.fd, reply)


def test_robotiq_over_a_pty_activates_commands_and_reads_width():
    master, slave = pty.openpty()
    device = FakeRobotiq(master)
    device.start()
    cfg = GripperConfig(kind="robotiq", speed=0.15, force=235.0, open_width=0.085,
                        robotiq_port=os.ttyname(slave), command_timeout_s=1.0)
    gripper = RobotiqGripper(cfg)
    try:
        assert device.requests[0] == bytes(6)  # reset, then activate with rACT | rGTO
        assert device.requests[1][0] == 0x09
        gripper.command(close=True)
        assert device.requests[-1] == bytes([0x09, 0, 0, 255, 255, 255])  # full speed/force map to 255
        assert gripper.width() == pytest.approx(0.0)
        gripper.open_blocking()
        assert gripper.width() == pytest.approx(0.085)
    finally:
        device.stop.set()
        gripper.close()
        os.close(master)
        os.close(slave)


def test_robotiq_silence_is_a_timeout_error():
    master, slave = pty.openpty()
    port = SerialPort(os.ttyname(slave), 115200)
    try:
        with pytest.raises(RuntimeError, match="did not answer within 0.05 s"):
            port.read_exactly(8, 0.05)
    finally:
        port.close()
        os.close(master)
        os.close(slave)


# ---------------------------------------------------------------------------------------------------------------
# franky against franky-sim

franky = pytest.importorskip("franky")
franky_sim = pytest.importorskip("franky_sim")


def _sim_servers():
    """Simulator-side protocol servers that can inject a reflex or answer like a Panda (server version 5)."""
    from franky_sim import FrankaRobotServer, SimulationServer
    from franky_sim.franka_robot_protocol import (
        AutomaticErrorRecoveryCommand,
        BaseCommand,
        MoveStatus,
        RobotCommand,
        RobotMode,
    )
    from franky_sim.franka_server import Command, ConnectCommand, MessageHeader

    class FaultyRobotServer(FrankaRobotServer):
        """Aborts the running motion with a cartesian_reflex on request; clears it on automatic recovery."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fault_requested = False
            self.faulted = False
            self.recoveries = 0
            server = self

            class Recovery(AutomaticErrorRecoveryCommand):
                def handle(self, srv):
                    server.faulted = False
                    server.recoveries += 1
                    super().handle(srv)

            # franky-sim keeps its command table private; swapping one entry is the least intrusive hook.
            self._FrankaServer__command_class_map[RobotCommand.kAutomaticErrorRecovery] = Recovery

        def process_commands(self):
            super().process_commands()
            if self.fault_requested and self.current_motion_id:
                self.fault_requested = False
                self.faulted = True  # this tick's state carries the errors; the abort follows next tick
            elif self.faulted and self.current_motion_id:
                motion_id = self.current_motion_id
                self.stop_motion(send_preemption_signal=False)
                BaseCommand.send_response(self._tcp_socket, RobotCommand.kMove, motion_id, MoveStatus.kReflexAborted)
                self.reset_current_motion_id()

        @property
        def robot_state(self):
            state = super().robot_state
            if self.faulted:
                errors = [False] * 41
                errors[7] = True  # cartesian_reflex
                state = state.replace(robot_mode=RobotMode.kReflex, errors=tuple(errors), reflex_reason=tuple(errors))
            return state

    class PandaConnect(ConnectCommand):
        def handle(self, server, command_type_struct="I"):
            header = MessageHeader(self.command_type, self.command_id, 8)
            # status kIncompatibleLibraryVersion (1) and server version 5, as a Panda on system 4.2 answers
            reply = header.to_bytes(command_type_struct=command_type_struct) + struct.pack("<BH5x", 1, 5)
            self.client_socket.sendall(reply)

    class PandaRobotServer(FrankaRobotServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._FrankaServer__command_class_map[Command.kConnect] = PandaConnect

    def simulation_server(server_cls):
        class Server(SimulationServer):
            def init(self):
                for robot in self.sim.robots:
                    rs = server_cls(robot, self._remaining_hostname_candidates)
                    rs.init()
                    self.robot_servers.append(rs)
                self.sim.start()

        return Server

    return simulation_server(FaultyRobotServer), simulation_server(PandaRobotServer)


@pytest.fixture(scope="module")
def sim():
    from franky_sim.mujoco_simulator import MujocoSimulator

    faulty_server, _ = _sim_servers()
    with MujocoSimulator() as simulator:
        robot = simulator.add_robot()
        with faulty_server(simulator) as server:
            server.run_async()
            yield robot.hostname, server.robot_servers[0]


def sim_config(hostname: str, **overrides) -> FrankaEnvConfig:
    data = dict(
        robot_ip=hostname,
        realtime="ignore",
        control_hz=10.0,
        max_episode_steps=20,
        relative_dynamics_factor=0.5,
        reset_dynamics_factor=0.5,
        joint_reset_every=0,
        home_position=[0.5, 0.0, 0.35],
        workspace_low=[0.35, -0.2, 0.1],
        workspace_high=[0.56, 0.2, 0.45],
        gripper={"kind": "franka_hand", "cooldown_s": 0.0, "command_timeout_s": 15.0, "home_on_connect": False},
    )
    data.update(overrides)
    return from_dict(FrankaEnvConfig, data)


def make_env(hostname: str, **overrides):
    from q2rl.robot.franka import FrankaEnv

    return FrankaEnv(sim_config(hostname, **overrides))


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ee_position(env) -> np.ndarray:
    return env._measure().position


@pytest.mark.timeout(120)
def test_impedance_steps_reach_targets_and_box_clips(sim):
    hostname, _ = sim
    # Room for many steps: on a loaded machine the simulated arm lags its targets, so reaching the box edge can
    # take more than the usual 20-step episode (it was truncated there once, with two benchmarks running).
    env = make_env(hostname, max_episode_steps=200)
    try:
        obs, info = env.reset(seed=0)
        assert obs["state"].shape == (10,) and obs["state"].dtype == np.float32
        np.testing.assert_allclose(obs["state"][:3], [0.5, 0.0, 0.35], atol=0.005)
        # Rx(pi) has columns (1, 0, 0) and (0, -1, 0): rot6d = (1, 0, 0, 0, -1, 0).
        np.testing.assert_allclose(obs["state"][3:9], [1, 0, 0, 0, -1, 0], atol=0.01)
        assert obs["state"][9] == pytest.approx(0.08, abs=0.002)  # opened at reset
        # +x at full scale: 2 cm per step from the measured pose; the box stops x at 0.56.
        clipped = []
        while not any(clipped[-2:]):  # the simulator may run slower than real time on a loaded machine
            obs, reward, terminated, truncated, info = env.step(np.array([1, 0, 0, 0, 0, 0, -1], np.float32))
            assert not info["fault"] and not terminated and not truncated and reward == 0.0
            clipped.append(info["target_clipped"])
            assert env.last_target.position[0] <= 0.56
        assert clipped[0] is False
        assert wait_until(lambda: abs(ee_position(env)[0] - 0.56) < 0.01), ee_position(env)
        np.testing.assert_allclose(ee_position(env), [0.56, 0.0, 0.35], atol=0.01)
        assert ee_position(env)[0] < 0.56 + 0.005
        # The operator's success key ends the episode with reward 1.
        env.signals.mark_success()
        _, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    finally:
        env.close()


@pytest.mark.timeout(120)
def test_cartesian_mode_reaches_target_closes_gripper_and_truncates_at_time_limit(sim):
    hostname, _ = sim
    env = make_env(hostname, control_mode="cartesian", max_episode_steps=6,
                   gripper={"cooldown_s": 0.0, "command_timeout_s": 15.0, "home_on_connect": True})
    try:
        env.reset(seed=1)
        truncated = False
        steps = 0
        while not truncated:
            _, _, terminated, truncated, info = env.step(np.array([0, 1, -1, 0, 0, 0, 1], np.float32))
            steps += 1
            assert not terminated and not info["fault"]
        assert steps == 6
        target = env.last_target.position
        assert wait_until(lambda: np.linalg.norm(ee_position(env) - target) < 0.005), (ee_position(env), target)
        assert target[1] > 0.02 and target[2] < 0.35 - 0.02  # each step moved on from the measured pose (+y, -z)
        assert wait_until(lambda: env._gripper.width() < 0.01)  # closed (no object in the simulated hand)
    finally:
        env.close()


@pytest.mark.timeout(120)
def test_a_gripper_command_given_while_the_fingers_move_waits_for_them_and_the_newest_wins(sim):
    # A policy's gripper action flipping every step (an untrained one does): a command given while the last still
    # runs must neither block the step (franky's future waits on being dropped; with the simulator in this process
    # that was a deadlock) nor be lost: the newest one runs once the fingers stop.
    hostname, _ = sim
    env = make_env(hostname, max_episode_steps=200)
    try:
        env.reset(seed=5)
        for sign in (1, -1, 1, -1, 1):
            _, _, _, truncated, info = env.step(np.array([0, 0, 0, 0, 0, 0, sign], np.float32))
            assert not truncated and not info["fault"]
        for _ in range(150):  # zeros keep the filter's last decision (close); the fingers get there in time
            _, _, _, truncated, info = env.step(np.zeros(7, np.float32))
            assert not truncated and not info["fault"]
            if env._gripper.width() < 0.01 and env._gripper._pending is None and env._gripper._waiting is None:
                break
        assert env._gripper.width() < 0.01, env._gripper.width()
        assert env._gripper._waiting is None
    finally:
        env.close()


@pytest.mark.timeout(120)
def test_reflex_truncates_with_errors_and_recovery_happens_before_next_reset(sim):
    hostname, server = sim
    env = make_env(hostname)
    try:
        env.reset(seed=2)
        recoveries = server.recoveries
        env.step(np.array([0.5, 0, 0, 0, 0, 0, 0], np.float32))
        server.fault_requested = True
        for _ in range(15):  # the abort arrives within a few simulator ticks
            _, _, terminated, truncated, info = env.step(np.zeros(7, np.float32))
            if truncated:
                break
        assert truncated and not terminated and not info["success"]
        assert "cartesian_reflex" in info["fault"]
        assert env.fault and server.recoveries == recoveries  # nothing cleared behind the operator's back
        last_target = env.last_target
        _, _, _, truncated, info = env.step(np.ones(7, np.float32))  # no commands to a faulted robot
        assert truncated and "cartesian_reflex" in info["fault"] and env.last_target is last_target
        obs, info = env.reset(seed=3)
        assert "cartesian_reflex" in info["recovered"] and server.recoveries == recoveries + 1
        assert not env.fault
        _, _, _, truncated, info = env.step(np.zeros(7, np.float32))
        assert not truncated and not info["fault"]
        env.reset(seed=4)  # a clean episode: no recovery call at all
        assert server.recoveries == recoveries + 1
    finally:
        env.close()


@pytest.mark.timeout(120)
def test_joint_reset_runs_periodically(sim):
    hostname, _ = sim
    # Cartesian mode: after reset the arm holds the home motion's end point; an impedance tracker started on
    # a loaded machine lets franky-sim's arm sag a few mm, which is not what this test is about.
    env = make_env(hostname, joint_reset_every=2, max_episode_steps=1, control_mode="cartesian")
    try:
        flags = [env.reset(seed=i)[1]["joint_reset"] for i in range(3)]
        assert flags == [True, False, True]
        np.testing.assert_allclose(ee_position(env), [0.5, 0.0, 0.35], atol=0.005)
    finally:
        env.close()


@pytest.mark.timeout(60)
def test_panda_server_version_gets_install_advice():
    from franky_sim.mujoco_simulator import MujocoSimulator

    from q2rl.robot.franka import RobotVersionError

    _, panda_server = _sim_servers()
    with MujocoSimulator() as simulator:
        robot = simulator.add_robot()
        with panda_server(simulator, hostname_candidates=["127.0.0.2"]) as server:
            server.run_async()
            with pytest.raises(RobotVersionError, match=r"(?s)server version 5 .*by-robot-server-version/5/"):
                make_env(robot.hostname)


@pytest.mark.timeout(120)
def test_camera_images_in_observations_and_a_stalled_camera_cuts_the_episode(sim):
    from test_cameras import FakeDevice  # the fake RealSense device of the camera tests

    from q2rl.robot.cameras import CameraRig
    from q2rl.robot.franka import FrankaEnv

    hostname, _ = sim
    camera = {"name": "wrist", "serial": "1", "capture_width": 64, "capture_height": 48, "height": 24, "width": 32,
              "stale_after_s": 0.3, "wait_timeout_s": 0.1}
    cfg = sim_config(hostname, cameras=[camera])
    device = FakeDevice()
    env = FrankaEnv(cfg, cameras=CameraRig(cfg.cameras, device.open))
    try:
        obs, info = env.reset(seed=0)
        assert obs["images"]["wrist"].shape == (24, 32, 3) and obs["images"]["wrist"].dtype == np.uint8
        assert env.observation_space["images"]["wrist"].shape == (24, 32, 3)
        _, _, _, truncated, info = env.step(np.zeros(7, np.float32))
        assert not truncated and info["stale_cameras"] == []
        device.stalled.set()
        for _ in range(10):
            _, _, terminated, truncated, info = env.step(np.zeros(7, np.float32))
            if truncated:
                break
        assert truncated and not terminated and info["stale_cameras"] == ["wrist"]
        assert "stale camera frames: wrist" in info["fault"]
        assert not env.fault  # a camera stall needs no robot recovery
    finally:
        device.stalled.clear()
        env.close()
