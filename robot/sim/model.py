"""Build the MuJoCo model of a task: the Panda (assets/panda.xml), a table, cameras and the task's objects."""

from __future__ import annotations

from importlib import resources

import mujoco

from q2rl.robot.sim.config import SimEnvConfig
from q2rl.robot.sim.tasks import Task

ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))


def _panda_xml() -> bytes:
    return resources.files("q2rl.robot.sim").joinpath("assets/panda.xml").read_bytes()


def scene_xml(task: Task, cfg: SimEnvConfig) -> str:
    """The MJCF text of the whole scene for `task`."""
    size = max(cfg.image_size, 64)
    shadow = "true" if cfg.shadows else "false"
    reflectance = "0.2" if cfg.reflections else "0"
    return f"""
<mujoco model="q2rl_{task.full_name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{cfg.physics_timestep}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <global offwidth="{size}" offheight="{size}"/>
    <quality shadowsize="{2048 if cfg.shadows else 0}" offsamples="{cfg.antialias_samples}"
             numslices="{cfg.render_slices}" numstacks="{max(2, cfg.render_slices // 2)}" numquads="1"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.3 0.3 0.3" specular="0 0 0"/>
  </visual>
  <asset>
    <material name="table" rgba="0.75 0.7 0.62 1" reflectance="{reflectance}" specular="0.05" shininess="0"/>
  </asset>
  <include file="panda.xml"/>
  <worldbody>
    <light name="top" pos="0.5 0 1.5" dir="0 0 -1" directional="true" castshadow="{shadow}" diffuse="0.4 0.4 0.4" specular="0 0 0"/>
    <!-- a coarse render grid (third size): software GL pays for every quad of a fine one -->
    <geom name="table" type="plane" size="1.2 1.2 0.6" material="table"/>
    <camera name="front" pos="0.95 0 0.35" xyaxes="0 1 0 -0.58 0 0.815" fovy="55"/>
    {task.scene_xml()}
  </worldbody>
</mujoco>
"""


def build_model(task: Task, cfg: SimEnvConfig) -> mujoco.MjModel:
    """Compile the scene of `task` (no files are written; the Panda comes from the package's assets)."""
    return mujoco.MjModel.from_xml_string(scene_xml(task, cfg), assets={"panda.xml": _panda_xml()})
