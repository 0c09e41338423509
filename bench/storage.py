"""Disk an hour of robot time takes in the episode store with two 84x84 cameras at 10 Hz, and what the lossless
image compression costs the actor loop.

    .venv/bin/python bench/storage.py [--episodes 10] [--image-size 84] [--task pick_cube]

Frames come from the sim (the scripted expert of --task, two cameras, no object poses). Each step is encoded as
the actor's link encodes it (q2rl.wire: images once per frame, zlib level 1) and counted with its record header, as
the episode store keeps it. The raw figure is the same steps with uncompressed images. Sim frames are flat colours;
a real camera adds sensor noise, which compresses far worse: the `noisy` figures add Gaussian noise (std
--noise-std grey levels) to every frame as a stand-in. compress_ms_per_frame is the encoder's time per camera image
in the actor's control loop (`q2rl.actor.link.ActorLink.add`). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from q2rl import wire
from q2rl.interfaces import Transition
from q2rl.learner.episode_store import RECORD_HEADER_BYTES

CAMERAS = ("wrist", "front")
STEPS_PER_HOUR = 10 * 3600


def expert_episodes(task: str, image_size: int, episodes: int) -> list:
    """Demos (q2rl.demos.hdf5.Demo) of the task's scripted expert with both cameras and no object poses."""
    from q2rl.demos.scripted import default_noise, run_expert_episode
    from q2rl.robot.sim import SimEnvConfig, make_sim_env
    from q2rl.robot.sim.experts import make_expert

    cfg = SimEnvConfig(task=task, cameras=CAMERAS, image_size=image_size, privileged_state=False)
    env = make_sim_env(cfg)
    expert = make_expert(task, default_noise(task), np.random.default_rng(0), cfg)
    try:
        return [run_expert_episode(env, expert, seed, CAMERAS) for seed in range(episodes)]
    finally:
        env.close()


def episode_transitions(demo, noise_std: float, rng: np.random.Generator) -> list[Transition]:
    """The demo as the actor's transitions (each next_obs is the next step's obs, as an env loop makes them)."""
    def frame(images: dict, i: int) -> dict:
        out = {c: images[c][i] for c in CAMERAS}
        if noise_std > 0:
            out = {c: np.clip(v + rng.normal(0, noise_std, v.shape), 0, 255).astype(np.uint8) for c, v in out.items()}
        return out

    n = len(demo)
    frames = [frame(demo.images, i) for i in range(n)] + [frame(demo.next_images, n - 1)]
    states = list(demo.states) + [demo.next_states[-1]]
    zeros = np.zeros(7, np.float32)
    return [Transition(actor_id="a0", episode_id=0, step=i, seq=i, obs={"state": states[i], "images": frames[i]},
                       action=demo.actions[i], reward=float(demo.rewards[i]), terminated=i == n - 1 and demo.success,
                       truncated=i == n - 1 and not demo.success,
                       next_obs={"state": states[i + 1], "images": frames[i + 1]}, a_bc=zeros, a_rl=zeros, q_bc=0.0,
                       q_rl=0.0, source="bc", param_version=0) for i in range(n)]


def stored_bytes(transitions: list[Transition], compress: bool) -> int:
    """Bytes the episode store takes for these transitions (images once per frame, record headers included)."""
    total = 0
    for i, t in enumerate(transitions):
        item = wire.encode_item_transition(t, omit_next_images=i < len(transitions) - 1)
        if not compress:  # the same item with raw images (what protocol 3 sent)
            item = wire.pb.Item.FromString(item)
            for obs in (item.transition.obs, item.transition.next_obs):
                for name, image in obs.images.items():
                    image.CopyFrom(wire.tensor_proto(wire.tensor_from_proto(image)))
            item = item.SerializeToString()
        total += len(item) + RECORD_HEADER_BYTES
    return total


def compress_ms(transitions: list[Transition]) -> float:
    images = [t.obs["images"][c] for t in transitions for c in CAMERAS]
    start = time.perf_counter()
    for image in images:
        wire.tensor_proto(image, compress=True)
    return (time.perf_counter() - start) / len(images) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--task", default="pick_cube")
    p.add_argument("--noise-std", type=float, default=3.0, help="grey levels of the stand-in sensor noise")
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering, as the q2rl command chooses it
    rng = np.random.default_rng(0)
    demos = expert_episodes(args.task, args.image_size, args.episodes)
    clean = [t for d in demos for t in episode_transitions(d, 0.0, rng)]
    noisy = [t for d in demos for t in episode_transitions(d, args.noise_std, rng)]
    per_hour = lambda transitions, compress: stored_bytes(transitions, compress) / len(transitions) * STEPS_PER_HOUR
    raw, stored, stored_noisy = per_hour(clean, False), per_hour(clean, True), per_hour(noisy, True)
    figures = {
        "task": args.task, "image_size": args.image_size, "cameras": list(CAMERAS), "steps": len(clean),
        "disk_gb_per_hour_raw": round(raw / 1e9, 3), "disk_gb_per_hour_stored": round(stored / 1e9, 3),
        "compression_ratio": round(raw / stored, 1),
        "disk_gb_per_hour_stored_noisy": round(stored_noisy / 1e9, 3),
        "compression_ratio_noisy": round(raw / stored_noisy, 2), "noise_std": args.noise_std,
        "compress_ms_per_frame": round(compress_ms(clean), 4),
        "compress_ms_per_frame_noisy": round(compress_ms(noisy), 4),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
