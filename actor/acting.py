"""One way to build an acting policy from saved parameters: a run's learner checkpoint or an exported policy file.

    policy = ActingPolicy.from_run(run_dir, "best", cfg)      # checkpoint/best.ckpt of a run (q2rl actor --evaluate)
    policy.export("best.policy")                              # one self-contained, pickle-free file (q2rl export)
    policy = ActingPolicy.load("best.policy")                 # anywhere, without the run (q2rl deploy)
    problems = policy.contract_differences(state_dim, cameras)  # what an environment would break
    actor = build_actor(policy, cfg, env, policy="gated")     # the training actor's loop, no learner, no link

An exported policy file is a q2rl checkpoint (core/checkpoint.py: a JSON header + msgpack, no pickle) of kind
`q2rl_policy`: its payload holds the acting parameters (AgentParams: pi_RL and its encoder, the critic heads and
their targets the gate scores with, V_phi and its statistics, the observation normaliser, pi_BC's parameters and
normaliser), never the optimiser state; its header holds what rebuilds and checks it: pi_BC's network config, the
agent config the gate reads, the observation/action contract, the env section it was trained with, and provenance
(run, checkpoint, eval figures, git commit).
"""

from __future__ import annotations

import dataclasses
import datetime
import subprocess
from pathlib import Path
from typing import Any, Mapping

from q2rl.core.checkpoint import (CheckpointError, bc_policy_from_state, bc_policy_file, load_checkpoint,
                                  load_bc_policy_with_metadata, save_checkpoint)
from q2rl.interfaces import ACTION_DIM

POLICY_FILE_KIND = "q2rl_policy"
POLICY_FILE_VERSION = 1


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the q2rl checkout (None outside a git work tree or without git)."""
    where = where or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclasses.dataclass
class ActingPolicy:
    """Everything acting needs: pi_BC, the agent config and parameters of the gate, the contract, provenance."""

    agent: Any  # core.agent_config.AgentConfig
    bc: Any  # core.policies.BCPolicy
    bc_meta: dict  # the BC checkpoint's metadata: its network config, state size, cameras, training record
    params: Any  # AgentParams as a state dict (nested numpy), pi_BC included
    online: bool  # the parameters were trained online (else: saved before Q-Estimation, pi_BC alone acts)
    param_version: int
    contract: dict  # {"state_dim": D, "cameras": {name: [H, W, 3]}, "action_dim": 7}
    env: dict  # the env section the policy was trained with
    provenance: dict

    # ---------------------------------------------------------------------------------------- from a run
    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "last", cfg=None,
                 path: str | Path | None = None) -> "ActingPolicy":
        """The policy in a run's checkpoint: `checkpoint` last|best (or a file `path` of the run, e.g. a best
        candidate); `cfg` the run config (default: RUN/config.yaml)."""
        from q2rl.config import load_config, to_dict
        from q2rl.core.parameters import load_learner_checkpoint
        from q2rl.run_config import RunConfig, file_digest
        from q2rl.run_dir import CHECKPOINTS, CONFIG_FILE, EVAL_FILES, find_bc_checkpoint, read_json

        run_dir = Path(run_dir)
        if cfg is None:
            cfg = load_config(RunConfig, run_dir / CONFIG_FILE)
        standard = path is None
        path = Path(path) if path is not None else run_dir / CHECKPOINTS[checkpoint]
        if not path.is_file():
            why = ("it is written when an evaluation window (learner.eval_window evaluation episodes) closes among "
                   "the best so far" if checkpoint == "best" else "the learner writes it every "
                   "learner.checkpoint_every_s and when it stops")
            raise CheckpointError(f"{path} does not exist, so there is no {checkpoint} checkpoint; {why}")
        ckpt = load_learner_checkpoint(path)
        meta = ckpt.metadata
        bc_path = find_bc_checkpoint(cfg.bc.checkpoint, run_dir)  # RUN/bc/ first: a run stands alone
        bc, bc_meta = load_bc_policy_with_metadata(bc_path)
        book = meta.get("book", {})
        state_dim = int(bc.normalizer.state_mean.shape[-1])
        evaluated = read_json(run_dir / EVAL_FILES[checkpoint]) if checkpoint in EVAL_FILES else None
        if not standard:  # a candidate's file: its own line of best_eval.json, if the final evaluation ran it
            mine = [c for c in (evaluated or {}).get("candidates", [])
                    if (run_dir / c.get("file", "")).resolve() == path.resolve()]
            evaluated = mine[0] if mine else None
        if "candidate" in meta:  # a best candidate: the window it was kept for
            chosen_on = meta["candidate"].get("point")
        else:
            chosen_on = book.get("best_eval") if checkpoint == "best" and standard else None
        provenance = {
            "run_dir": str(run_dir.resolve()),
            "checkpoint": checkpoint,
            "checkpoint_file": str(path.resolve()),
            "updates": book.get("updates"),
            "env_steps": book.get("env_steps"),
            "phase": book.get("phase"),
            "chosen_on": chosen_on,
            "last_eval_window": (book.get("eval_curve") or [None])[-1],
            "fresh_evaluation": evaluated,  # RUN/final_eval.json or best_eval.json, when there is one
            "bc_checkpoint": str(bc_policy_file(bc_path).resolve()),
            "bc_digest": file_digest(bc_policy_file(bc_path)),
            "git_commit": git_commit(),
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        return cls(agent=cfg.agent, bc=bc, bc_meta=bc_meta, params=ckpt.state["params"],
                   online=book.get("phase") in ("online", "done"), param_version=int(book.get("param_version", 0)),
                   contract={"state_dim": state_dim,
                             "cameras": {k: list(v) for k, v in cfg.env.camera_shapes().items()},
                             "action_dim": ACTION_DIM},
                   env=to_dict(cfg.env), provenance=provenance)

    # ---------------------------------------------------------------------------------------- the file
    def export(self, path: str | Path) -> Path:
        """Write the self-contained policy file (atomically)."""
        from q2rl.config import to_dict

        metadata = {
            "kind": POLICY_FILE_KIND,
            "policy_file_version": POLICY_FILE_VERSION,
            "agent": to_dict(self.agent),
            "bc": self.bc_meta,
            "online": self.online,
            "param_version": self.param_version,
            "contract": self.contract,
            "env": self.env,
            "provenance": self.provenance,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return save_checkpoint(path, {"params": self.params}, metadata)

    @classmethod
    def load(cls, path: str | Path) -> "ActingPolicy":
        """Read an exported policy file; CheckpointError names what is wrong with it."""
        from q2rl.config import ConfigError, from_dict
        from q2rl.core.agent_config import AgentConfig

        ckpt = load_checkpoint(path)
        meta = ckpt.metadata
        if meta.get("kind") != POLICY_FILE_KIND:
            hint = (" (a learner checkpoint: export it first with `q2rl export RUN`)"
                    if meta.get("kind") == "learner_state" else "")
            raise CheckpointError(f"{path}: holds a {meta.get('kind')!r} file, not an exported policy{hint}")
        if meta.get("policy_file_version") != POLICY_FILE_VERSION:
            raise CheckpointError(f"{path}: policy file version {meta.get('policy_file_version')!r}, this q2rl reads "
                                  f"{POLICY_FILE_VERSION}; export it again with this version")
        try:
            agent = from_dict(AgentConfig, meta["agent"])
            params = ckpt.state["params"]
            bc = bc_policy_from_state(meta["bc"], params["bc"], str(path))
            return cls(agent=agent, bc=bc, bc_meta=meta["bc"], params=params, online=bool(meta["online"]),
                       param_version=int(meta["param_version"]), contract=meta["contract"], env=meta["env"],
                       provenance=meta.get("provenance", {}))
        except (KeyError, TypeError, ConfigError) as e:
            raise CheckpointError(f"{path}: exported policy is missing or has a bad entry ({e})") from None

    # ---------------------------------------------------------------------------------------- checks
    def contract_differences(self, state_dim: int, cameras: Mapping[str, Any], action_dim: int = ACTION_DIM
                             ) -> list[str]:
        """What differs between the policy's observation/action contract and an environment's (empty: it fits)."""
        want, problems = self.contract, []
        if int(want["state_dim"]) != int(state_dim):
            problems.append(f"state size: the policy reads {want['state_dim']} values, the environment gives "
                            f"{state_dim}")
        have = {k: list(v) for k, v in cameras.items()}
        trained = {k: list(v) for k, v in want.get("cameras", {}).items()}
        missing, extra = sorted(set(trained) - set(have)), sorted(set(have) - set(trained))
        if missing:
            problems.append(f"cameras: the policy reads {', '.join(missing)}, which the environment does not give "
                            f"(it gives {', '.join(sorted(have)) or 'none'})")
        if extra:
            problems.append(f"cameras: the environment gives {', '.join(extra)}, which the policy was not trained on "
                            f"(it reads {', '.join(sorted(trained)) or 'none'})")
        for name in sorted(set(trained) & set(have)):
            if trained[name] != have[name]:
                problems.append(f"camera {name}: the policy reads {'x'.join(map(str, trained[name]))} images, the "
                                f"environment gives {'x'.join(map(str, have[name]))}")
        if int(want.get("action_dim", ACTION_DIM)) != int(action_dim):
            problems.append(f"actions: the policy outputs {want.get('action_dim')} values, the environment takes "
                            f"{action_dim}")
        return problems

    def env_differences(self, env: Mapping[str, Any]) -> list[str]:
        """Env settings that differ from training without breaking the contract (worth a warning): the backend's
        section, time limits aside."""
        def leaves(d: Any, prefix: str) -> dict:
            if not isinstance(d, Mapping):
                return {prefix: d}
            out: dict = {}
            for k, v in d.items():
                out.update(leaves(v, f"{prefix}.{k}" if prefix else k))
            return out

        backend = env.get("backend")
        if backend != self.env.get("backend"):
            return [f"env.backend: trained on {self.env.get('backend')}, running on {backend}"]
        a, b = leaves(self.env.get(backend, {}), f"env.{backend}"), leaves(env.get(backend, {}), f"env.{backend}")
        return [f"{k}: trained with {a.get(k)!r}, now {b.get(k)!r}" for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k) and not k.endswith("max_episode_steps")]

    def summary(self) -> str:
        p = self.provenance
        window = p.get("chosen_on") or p.get("last_eval_window")
        fresh = p.get("fresh_evaluation")
        parts = [f"{p.get('checkpoint', '?')} checkpoint of {p.get('run_dir', '?')}",
                 f"{p.get('updates')} updates, {p.get('env_steps')} env steps, "
                 + ("trained online" if self.online else "saved before online RL: pi_BC alone acts")]
        if window:
            parts.append(f"eval window {100 * window['success_rate']:.0f}% over {window.get('episodes')} episodes")
        fresh = (fresh or {}).get("fresh", fresh)  # a candidate's line of best_eval.json holds it under "fresh"
        if fresh and fresh.get("success_rate") is not None:
            parts.append(f"fresh evaluation {100 * fresh['success_rate']:.0f}% over {fresh.get('episodes')} episodes")
        return "; ".join(parts)


def build_actor(policy: ActingPolicy, cfg, env, *, mode: str = "gated", console=None, recorder=None,
                paced_by_learner: bool | None = None, status_dir=None):
    """The training actor (actor/actor.py) acting with `policy`'s parameters: no learner, no link. `mode` gated,
    rl (pi_RL alone) or bc (pi_BC alone); a policy saved before online RL acts as pi_BC whatever the mode."""
    from q2rl.actor.actor import Actor

    cfg = dataclasses.replace(cfg, agent=policy.agent)
    actor = Actor(cfg, env, policy.bc, sink=None, source=None, console=console, recorder=recorder, policy=mode,
                  paced_by_learner=paced_by_learner, status_dir=status_dir)
    set_policy_params(actor, policy)
    return actor


def set_policy_params(actor, policy: ActingPolicy) -> None:
    """Put `policy`'s parameters on `actor` (typed like its template); before online RL it keeps pi_BC alone."""
    from flax.serialization import from_state_dict

    try:
        params = from_state_dict(actor.template, policy.params)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"the saved parameters do not match the agent's networks ({e})") from None
    if policy.online:
        actor.set_params(params, policy.param_version)
    else:
        actor.params, actor.version = None, 0
