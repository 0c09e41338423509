"""Transport benchmark over loopback gRPC: ingest throughput, parameter latency, control-loop jitter.

    .venv/bin/python bench/transport.py [--quick]

The learner runs as its own process and this process is the actor, as in a one-host session; the learner
stores every transition durably (fsync per batch) before acknowledging it, so the rates include the disk.
Targets (issue 4): state transitions >= 10k/s, 2x128x128 image transitions >= 500/s, parameter publish ->
applied on the actor <= 100 ms for 20 MB, 10 Hz loop jitter p99 <= 5 ms with the link busy.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from q2rl.actor.link import ActorLink
from q2rl.interfaces import EpisodeReport, Transition
from q2rl.learner.episode_store import EpisodeStore
from q2rl.learner.service import LearnerService, ParameterBoard, ServiceAuth, serve

CONFIG_HASH = "bench"


def chained_transitions(actor_id: str, first_seq: int, n: int, episode_len: int, images: bool, rng):
    """n transitions in episodes of `episode_len` whose next_obs is the next obs (as an env loop makes them)."""
    def obs():
        o = {"state": rng.standard_normal(30).astype(np.float32)}
        if images:
            o["images"] = {k: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for k in ("wrist", "front")}
        return o

    cur, out = obs(), []
    for i in range(n):
        step = i % episode_len
        if step == 0:
            cur = obs()
        nxt = obs()
        a = rng.uniform(-1, 1, 7).astype(np.float32)
        out.append(Transition(actor_id, i // episode_len, step, first_seq + i, cur, a, 0.0,
                              False, step == episode_len - 1, nxt, a, a, 0.0, 0.0, "rl", 0))
        cur = nxt
    return out


def serve_learner(run_dir: str) -> None:
    """The learner side, as its own process: serve, then publish parameter sets when told on stdin."""
    store = EpisodeStore(run_dir)
    board = ParameterBoard()
    service = LearnerService(store, lambda ts: None, lambda r: None, board, ServiceAuth(config_hash=CONFIG_HASH))
    server = serve("127.0.0.1:0", service)
    print("PORT", server.bound_port, flush=True)
    rng = np.random.default_rng(1)
    trees: dict[float, dict] = {}
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "publish":
            megabytes, version = float(cmd[1]), int(cmd[2])
            if megabytes not in trees:  # three subsets, most bytes in the critic, as a Q2RL agent has
                n = int(megabytes * 1e6 / 4)
                trees[megabytes] = {
                    "policy": {"k": rng.standard_normal(n // 4).astype(np.float32)},
                    "critic": {"k": rng.standard_normal(n - 2 * (n // 4)).astype(np.float32)},
                    "value": {"k": rng.standard_normal(n // 4).astype(np.float32)},
                }
            start = time.time()  # wall clock: compared with the actor process's on the same host
            board.publish(version, trees[megabytes])
            print("PUBLISHED", version, repr(start), flush=True)
        elif cmd[0] == "quit":
            break
    server.stop(0)
    store.close()


class Bench:
    """A learner process and this process as the actor (with its link), on loopback, in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(root / "run")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline().split()[1])
        self.lock = threading.Lock()
        self.link = ActorLink(f"127.0.0.1:{port}", "bench", CONFIG_HASH, "", root / "spool")
        if not self.link.wait_connected(20):
            raise RuntimeError("the link did not connect")

    def publish(self, megabytes: float, version: int) -> float:
        """Ask the learner to publish; returns its wall-clock time at publish()."""
        with self.lock:
            self.proc.stdin.write(f"publish {megabytes} {version}\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline().split()
        assert reply[:2] == ["PUBLISHED", str(version)], reply
        return float(reply[2])

    def learner_cpu_s(self) -> float:
        """CPU seconds (user + system) the learner process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.link.close(5)
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(30)


def ingest_rate(bench: Bench, n: int, images: bool) -> dict:
    """Transitions/s from the first add() to the last acknowledgement (stored + fsync'd on the learner)."""
    rng = np.random.default_rng(0)
    ts = chained_transitions("bench", bench.link.next_seq, n, 100, images, rng)
    add_times = []
    start, cpu_actor, cpu_learner = time.perf_counter(), time.process_time(), bench.learner_cpu_s()
    for t in ts:
        t0 = time.perf_counter()
        bench.link.add(t)
        add_times.append(time.perf_counter() - t0)
        if t.truncated:
            bench.link.end_episode(EpisodeReport("bench", t.episode_id, 100, False, 0.0, 0.0))
    if not bench.link.flush(300):
        raise RuntimeError("ingest did not finish")
    elapsed = time.perf_counter() - start
    # CPU per transition does not depend on what else the machine runs; the rate does
    return {"per_s": n / elapsed, "add_us_median": 1e6 * statistics.median(add_times),
            "add_us_max": 1e6 * max(add_times),
            "actor_cpu_us": 1e6 * (time.process_time() - cpu_actor) / n,
            "learner_cpu_us": 1e6 * (bench.learner_cpu_s() - cpu_learner) / n}


def param_latency_ms(bench: Bench, megabytes: float, repeats: int, version0: int) -> float:
    """Median ms from the learner's board.publish() (encoding included) to the set being in link.latest()."""
    times = []
    for r in range(repeats):
        version = version0 + r
        result = {}

        def watch():
            while (got := bench.link.latest()) is None or got[0] < version:
                time.sleep(0.0002)
            result["applied"] = time.time()

        watcher = threading.Thread(target=watch)
        watcher.start()
        published = bench.publish(megabytes, version)
        watcher.join(30)
        times.append(1e3 * (result["applied"] - published))
        time.sleep(0.05)
    return statistics.median(times)


def loop_jitter(bench: Bench, seconds: float, hz: float = 10.0) -> dict:
    """Lateness of a 10 Hz loop's step (wake-up + its add()) while images stream and 10 MB sets arrive each second."""
    period = 1.0 / hz
    rng = np.random.default_rng(2)
    n = int(seconds * hz)
    ts = chained_transitions("bench", bench.link.next_seq, n, 100, True, rng)
    stop = threading.Event()

    def publisher():
        version = 10_000
        while not stop.wait(1.0):
            version += 1
            bench.publish(10, version)

    pub = threading.Thread(target=publisher, daemon=True)
    pub.start()
    lateness = []
    deadline = time.perf_counter() + period
    for t in ts:
        now = time.perf_counter()
        if deadline > now:
            time.sleep(deadline - now)
        bench.link.add(t)  # the loop's own network-facing work
        if t.truncated:
            bench.link.end_episode(EpisodeReport("bench", t.episode_id, 100, False, 0.0, 0.0))
        lateness.append(time.perf_counter() - deadline)
        deadline += period
    stop.set()
    pub.join(30)
    bench.link.flush(60)
    ms = 1e3 * np.asarray(lateness)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "samples": len(ms), "params_received": bench.link.health().param_version}


def bare_loop_jitter(seconds: float, hz: float = 10.0) -> dict:
    """The same 10 Hz loop with no link and no work: what the machine's scheduler alone costs (a control)."""
    period, lateness = 1.0 / hz, []
    deadline = time.perf_counter() + period
    for _ in range(int(seconds * hz)):
        now = time.perf_counter()
        if deadline > now:
            time.sleep(deadline - now)
        lateness.append(time.perf_counter() - deadline)
        deadline += period
    ms = 1e3 * np.asarray(lateness)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def learner_live_share() -> float | None:
    """Learner updates/s in a live session as a share of the bare jitted loop, measured by bench/live_share.py
    (it needs the learner, the agent and an actor); None when that measurement fails."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("live_share.py"))], stdout=subprocess.PIPE,
                          text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])["learner_live_share"]
    except (IndexError, KeyError, json.JSONDecodeError):
        return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run, not a measurement)")
    parser.add_argument("--serve", metavar="RUN_DIR", help=argparse.SUPPRESS)  # the learner process
    args = parser.parse_args(argv)
    if args.serve:
        serve_learner(args.serve)
        return 0
    n_state, n_image, repeats, jitter_s = (2000, 200, 2, 3.0) if args.quick else (30_000, 3000, 5, 30.0)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="q2rl-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            state = ingest_rate(bench, n_state, images=False)
            print(f"state transitions: {state['per_s']:.0f}/s (add median {state['add_us_median']:.0f} us, "
                  f"max {state['add_us_max']:.0f} us; CPU per transition: actor {state['actor_cpu_us']:.0f} us, "
                  f"learner {state['learner_cpu_us']:.0f} us)", flush=True)
            image = ingest_rate(bench, n_image, images=True)
            print(f"2x128x128 image transitions: {image['per_s']:.0f}/s (add median {image['add_us_median']:.0f} us, "
                  f"max {image['add_us_max']:.0f} us; CPU per transition: actor {image['actor_cpu_us']:.0f} us, "
                  f"learner {image['learner_cpu_us']:.0f} us)", flush=True)
            param_latency_ms(bench, 0.01, 1, version0=1)  # warm-up: the first publish imports flax on both ends
            params = {}
            for i, mb in enumerate((1, 10, 20)):
                params[mb] = param_latency_ms(bench, mb, repeats, version0=100 * (i + 1))
                print(f"parameters {mb} MB: publish -> applied {params[mb]:.1f} ms (median of {repeats})", flush=True)
            bare = bare_loop_jitter(jitter_s)
            print(f"bare 10 Hz loop (no link, the machine's own noise): p50 {bare['p50_ms']:.2f} ms, "
                  f"p99 {bare['p99_ms']:.2f} ms, max {bare['max_ms']:.2f} ms", flush=True)
            jitter = loop_jitter(bench, jitter_s)
            print(f"10 Hz loop with the link busy: lateness p50 {jitter['p50_ms']:.2f} ms, p99 {jitter['p99_ms']:.2f} ms,"
                  f" max {jitter['max_ms']:.2f} ms over {jitter['samples']} steps", flush=True)
        finally:
            bench.close()
    results = {
        "state_transitions_per_s": round(state["per_s"]),
        "image_transitions_per_s": round(image["per_s"]),
        "add_us_median_state": round(state["add_us_median"], 1),
        "add_us_median_image": round(image["add_us_median"], 1),
        "cpu_us_per_state_transition": {"actor": round(state["actor_cpu_us"], 1),
                                        "learner": round(state["learner_cpu_us"], 1)},
        "cpu_us_per_image_transition": {"actor": round(image["actor_cpu_us"], 1),
                                        "learner": round(image["learner_cpu_us"], 1)},
        "param_apply_ms_1mb": round(params[1], 1),
        "param_apply_ms_10mb": round(params[10], 1),
        "param_apply_ms_20mb": round(params[20], 1),
        "loop_jitter_p99_ms": round(jitter["p99_ms"], 2),
        "loop_jitter_max_ms": round(jitter["max_ms"], 2),
        "bare_loop_jitter_p99_ms": round(bare["p99_ms"], 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "learner_live_share": learner_live_share(),
        "quick": args.quick,
    }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
