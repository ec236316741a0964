"""Chaos run: kill -9 the sweep driver, a trial worker, the annotator and the watcher at seeded
random moments, recover the way a user would, and check what recovery promises. Prints JSON.

Why: kill -9 recovery is a design goal of `ambient sweep`, `annotate` and `watch`; a few
hand-placed kills in unit tests cannot show that it holds at *any* moment. Each target is killed
`--kills` times at a moment drawn uniformly over its expected duration (measured by an uncut
calibration run unless `--durations` gives it), recovered (`sweep resume`, `annotate` again, the
next `watch --once` passes) and checked:
- sweeps: every trial exactly once in MLflow (child runs of the one parent, unique by Ray trial
  id and by configuration + seed), all FINISHED, final evaluation logged once, no stray parent;
- annotations: versions contiguous, committed manifests never rewritten (create-only), output
  digests and rows as recorded, each input shard once, annotated rows == input rows, each
  (episode, frame) once, no done marker or lease left;
- processes: nothing the run started outlives a grace period after a kill or a recovery.
Each run has its own world (AMBIENT_HOME under .work/chaos/, SQLite MLflow, a short Ray temp dir)
and drives the real `ambient` CLI, each command in a session of its own. Every process carries
AMBIENT_CHAOS_RUN in its environment (Ray's daemons and workers inherit it): that is how orphans
are found and why only this run's processes are ever killed, also on Ctrl-C. A kill hits the
target's PID or (drawn per kill) its whole session: its group plus Ray's daemons and workers.
Exit status: 0 no violation, 1 violations, 2 no world (setup failed), 130 interrupted.
The full report, every attempt with its draw, is RUN_DIR/report.json.

Usage: .venv/bin/python benchmarks/chaos.py [--kills 20] [--seed 0] [--small]
         [--targets driver,worker,annotator,watcher] [--durations annotator=60,...] [--attempt I]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from chaos_checks import (  # the sibling module: this script runs as a file
    Inputs,
    annotation_violations,
    count,
    running_runs,
    sha256,
    sweep_violations,
)

from ambient_platform.settings import QUIET_ENV

ROOT = Path(__file__).resolve().parents[1]
MARK = "AMBIENT_CHAOS_RUN"
TARGETS = ("driver", "worker", "annotator", "watcher")
QUIET = QUIET_ENV | {"PYTHONUNBUFFERED": "1"}  # the platform's quiet defaults
_cli = Path(sys.executable).with_name("ambient")
AMBIENT = [str(_cli)] if _cli.exists() else [sys.executable, "-m", "orchestrator.cli"]
Steps = list[list[Any]]  # recovery steps: [command, exit status, seconds]
log = logging.getLogger("chaos")


@dataclass(frozen=True)
class Size:
    """How big the world is: the default keeps a kill window of about a minute per command on
    2 cores; ``--small`` (the test suite) keeps only what the invariants need."""

    clean: int = 8
    corrupt: int = 40  # episodes; the annotate input is 2 episodes per shard
    clf_steps: int = 10
    grid: str = "0,10,20,30,40,50,60,70,80,90,99"
    draws: int = 2
    new_shards: int = 4  # landed before each watch pass


SMALL = Size(clean=4, corrupt=12, clf_steps=4, grid="0,50,99", draws=1, new_shards=2)


# ------------------------------------------------------------------------------ the world


@dataclass
class Job:
    proc: subprocess.Popen[bytes]
    log: Path
    t0: float

    def last_error(self) -> str:
        """The line that says why a command failed (its `error:` line, else its last line)."""
        lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
        return (errors or lines or [""])[-1][:300]


class Lab:
    """One chaos run's isolated world and every process it starts."""

    def __init__(self, work: Path, seed: int, size: Size) -> None:
        self.token, self.size = uuid.uuid4().hex[:10], size
        stamp = time.strftime("%m%d-%H%M%S")
        self.dir = (work / f"run-s{seed}-{stamp}-{self.token[:4]}").resolve()
        self.home, self.logs = self.dir / "home", self.dir / "logs"
        self.ray_tmp = Path(f"/tmp/chx-{self.token}")  # Ray's socket paths need a short root
        self.logs.mkdir(parents=True)
        self.uri = f"sqlite:///{self.home / 'mlflow.db'}"
        drop = ("RAY_ADDRESS", "AMBIENT_STORAGE", "MLFLOW_TRACKING_URI", "AMBIENT_DEBUG")
        self.env = {k: v for k, v in os.environ.items() if k not in drop} | QUIET
        self.env |= {"AMBIENT_HOME": str(self.home), "MLFLOW_TRACKING_URI": self.uri}
        self.env |= {"RAY_TMPDIR": str(self.ray_tmp), "MPLCONFIGDIR": str(self.dir / "mpl")}
        self.env[MARK] = self.token
        self.n = 0

    def start(self, args: list[str], tag: str) -> Job:
        self.n += 1
        path = self.logs / f"{self.n:03d}-{tag}.log"
        cmd = [*AMBIENT, *args]
        with open(path, "wb") as out:
            out.write((" ".join(cmd) + "\n").encode())
            out.flush()
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return Job(proc, path, time.monotonic())

    def wait(self, job: Job, timeout: float) -> int:
        """The exit status; a command past ``timeout`` is killed with its session (-9)."""
        try:
            return job.proc.wait(max(1.0, timeout - (time.monotonic() - job.t0)))
        except subprocess.TimeoutExpired:
            log.warning("%s ran past %.0f s: killed", job.log.name, timeout)
            self.kill9(job.proc.pid, "session")
            return job.proc.wait()

    def run(self, args: list[str], tag: str, timeout: float) -> tuple[int, float, Job]:
        job = self.start(args, tag)
        rc = self.wait(job, timeout)
        return rc, time.monotonic() - job.t0, job

    def ours(self) -> list[psutil.Process]:
        """Live processes of this run: marked environment (inherited by everything its commands
        start), or Ray's temp dir on the command line (zombies are their parent's business).
        Not by session id: a session's leader PID can be reused by someone else's process."""
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            with contextlib.suppress(psutil.Error, OSError):
                if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                    continue
                cmd = " ".join(p.info["cmdline"] or [])
                if str(self.ray_tmp) in cmd or p.environ().get(MARK) == self.token:
                    found.append(p)
        return found

    def session_of(self, pid: int) -> list[psutil.Process]:
        """Our processes in ``pid``'s session (Ray workers lead process groups of their own)."""
        sid = _sid(pid)
        return [p for p in self.ours() if _sid(p.pid) == sid] if sid > 0 else []

    def kill9(self, pid: int, scope: str) -> int:
        """kill -9 ``pid`` alone, or its whole session; returns how many processes."""
        victims = {pid}
        if scope == "session":
            victims |= {p.pid for p in self.session_of(pid)}
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        for v in victims:
            with contextlib.suppress(OSError):
                os.kill(v, signal.SIGKILL)
        return len(victims)

    def settle(self, grace: float) -> list[str]:
        """Wait up to ``grace`` s for our processes to end; kill and describe the survivors."""
        deadline = time.monotonic() + grace
        while (left := self.ours()) and time.monotonic() < deadline:
            time.sleep(0.5)
        desc = []
        for p in left:
            with contextlib.suppress(psutil.Error):
                name = " ".join(p.cmdline())[:90]
                desc.append(f"pid {p.pid} {name} ({time.time() - p.create_time():.0f} s old)")
                p.kill()
        psutil.wait_procs(left, timeout=15)
        return desc

    def cleanup(self) -> None:
        for _ in range(3):
            left = self.ours()
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(left, timeout=10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _sid(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:
        return -1


# ------------------------------------------------------------------------------ data


def write_dataset(meta: dict[str, Any], table: pa.Table, out: Path, name: str) -> None:
    """``table`` as a dataset of 2-episode shards, meta.json (the commit point) last; the rest
    of meta.json is what `ambient data generate` wrote."""
    eps = sorted(set(table.column("episode_index").to_pylist()))
    (out / "data").mkdir(parents=True, exist_ok=True)
    shards = []
    for i in range(0, len(eps), 2):
        part = table.filter(pc.is_in(table["episode_index"], pa.array(eps[i : i + 2])))
        buf = io.BytesIO()
        pq.write_table(part, buf, compression="zstd")
        key = f"data/shard-{i // 2:05d}.parquet"
        (out / key).write_bytes(buf.getvalue())
        shards.append({"key": key, "rows": part.num_rows, "sha256": sha256(buf.getvalue())})
    meta = {**meta, "name": name, "episodes": len(eps), "shards": shards}
    meta["frames"] = sum(s["rows"] for s in shards)
    meta["digest"] = sha256("".join(s["sha256"] for s in shards).encode())
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def read_dataset(root: Path) -> tuple[dict[str, Any], pa.Table]:
    meta = json.loads((root / "meta.json").read_text())
    return meta, pa.concat_tables([pq.read_table(root / s["key"]) for s in meta["shards"]])


def build_world(lab: Lab, targets: list[str], timeout: float) -> dict[str, Path]:
    """Maze data, the annotate input (2-episode shards), the watch source, a tiny classifier,
    the sweep spec (sweeps/smoke.yaml, every trial to the end) and the watch file."""
    home, s = lab.home, lab.size
    maze, clf = home / "data" / "maze", home / "classifiers" / "tiny"
    p = {"ann_in": home / "data" / "ann-in", "watch_src": home / "data" / "watch-src"}
    p |= {"pool": maze / "corrupt", "clf": clf}
    steps = [["data", "generate", "maze", "--clean", str(s.clean), "--corrupt", str(s.corrupt),
              "--out", str(maze)]]  # fmt: skip
    if {"annotator", "watcher"} & set(targets):
        steps.append(
            ["classifier", "train", "--data", str(maze / "clean"), "--corrupt", str(p["pool"]),
             "--epochs", "1", "--steps-per-epoch", str(s.clf_steps), "--batch-size", "16",
             "--out", str(clf)]
        )  # fmt: skip
    for args in steps:
        rc, took, job = lab.run(args, "setup", timeout)
        if rc != 0:
            raise RuntimeError(f"`ambient {' '.join(args[:2])}` failed ({rc}): {job.last_error()}")
        log.info("setup: ambient %s (%.0f s)", " ".join(args[:2]), took)
    meta, table = read_dataset(p["pool"])
    write_dataset(meta, table, p["ann_in"], "corrupt")
    write_dataset(meta, table.filter(pc.less(table["episode_index"], 2)), p["watch_src"], "rrt")
    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec |= {"name": "chaos", "experiment": "sweep-chaos", "scheduler": {"kind": "none"}}
    spec["base_config"] = str(ROOT / "sweeps" / "train" / "bin_sorting_ambient.yaml")
    p["spec"] = lab.dir / "sweep.yaml"
    p["spec"].write_text(yaml.safe_dump(spec, sort_keys=False))
    watch: dict[str, Any] = {"name": "watch", "sources": [str(p["watch_src"])]}
    watch |= {"classifier": str(clf), "schedule": {"interval_s": 60}}
    watch |= {"out": str(home / "annotations" / "watch"), "epochs": [1], "num_draws": s.draws}
    watch |= {"grid_levels": [int(x) for x in s.grid.split(",")], "lease_ttl_s": 120}
    watch |= {"experiment": "annotation-chaos"}
    p["watch"] = lab.dir / "watch.yaml"
    p["watch"].write_text(yaml.safe_dump(watch, sort_keys=False))
    return p


# ------------------------------------------------------------------------------ targets


class Target:
    """A process to kill, how to recover from the kill, and what must hold afterwards."""

    name = ""
    scopes: tuple[str, ...] = ("pid", "session")

    def __init__(self, lab: Lab, paths: dict[str, Path], timeout: float) -> None:
        self.lab, self.paths, self.timeout = lab, paths, timeout

    def before(self, i: str) -> None:
        """Prepare attempt ``i`` (new data to land, say)."""

    def command(self, i: str) -> list[str]:
        raise NotImplementedError

    def victim(self, job: Job, rng: random.Random) -> tuple[int, str] | None:
        """(pid, what) to kill now, None to look again shortly."""
        return (job.proc.pid, self.name) if job.proc.poll() is None else None

    def recover(self, i: str, rc: int) -> tuple[Steps, list[str]]:
        """Run the recovery; its steps and the violations they showed."""
        if rc == 0:
            return [], []
        steps, rc, err = self.until(self.command(i), i, (0,), tries=3)
        return steps, [] if rc == 0 else [f"not recovered after {len(steps)} tries: {err}"]

    def check(self, i: str) -> list[str]:
        raise NotImplementedError

    def snapshot(self, i: str) -> dict[str, int]:
        """What the target had written when the kill landed (to reproduce a violation)."""
        return {}

    def until(
        self, args: list[str], i: str, ok: tuple[int, ...], tries: int
    ) -> tuple[Steps, int, str]:
        steps: Steps = []
        rc, err = -1, ""
        for _ in range(tries):
            rc, took, job = self.lab.run(args, f"{self.name}-{i}-recover", self.timeout)
            steps.append([" ".join(args[:2]).split(" --")[0], rc, round(took, 1)])
            if rc in ok:
                break
            err = job.last_error()
        return steps, rc, err


class Driver(Target):
    """`ambient sweep run`, killed; recovered by `ambient sweep resume` (or `run` again when
    the kill came before the sweep existed)."""

    name = "driver"

    def sweep(self, i: str) -> tuple[str, Path]:
        name = f"{self.name[0]}{i}"
        return name, self.lab.home / "sweeps" / name

    def command(self, i: str, verb: str = "run") -> list[str]:
        return ["sweep", verb, str(self.paths["spec"]), "--name", self.sweep(i)[0]]

    def recover(self, i: str, rc: int) -> tuple[Steps, list[str]]:
        steps: Steps = []
        err = ""
        while rc != 0 and len(steps) < 3:
            known = (self.sweep(i)[1] / "ambient_sweep.json").exists()
            more, rc, err = self.until(self.command(i, "resume" if known else "run"), i, (0,), 1)
            steps += more
        return steps, [] if rc == 0 else [f"not recovered after {len(steps)} tries: {err}"]

    def check(self, i: str) -> list[str]:
        return sweep_violations(self.lab.uri, self.sweep(i)[1])

    def snapshot(self, i: str) -> dict[str, int]:
        return count(self.sweep(i)[1], info="ambient_sweep.json", trials="trial_*",
                     checkpoints="trial_*/checkpoint_*")  # fmt: skip


class Worker(Driver):
    """A Ray worker running a trial (`ray::ImplicitFunc.train`), killed by PID; Tune retries
    the trial (max_failures), else `sweep resume` finishes it."""

    name = "worker"
    scopes = ("pid",)

    def victim(self, job: Job, rng: random.Random) -> tuple[int, str] | None:
        found = []
        for p in self.lab.session_of(job.proc.pid):
            with contextlib.suppress(psutil.Error):
                if "ImplicitFunc" in (cmd := " ".join(p.cmdline())):
                    found.append((p.pid, cmd.split()[0]))
        return rng.choice(sorted(found)) if found else None


class Annotator(Target):
    """`ambient annotate` of every 2-episode shard into a fresh root, killed; recovered by
    running it again."""

    name = "annotator"

    def root(self, i: str) -> Path:
        return self.lab.home / "annotations" / f"a{i}"

    def command(self, i: str) -> list[str]:
        p, s = self.paths, self.lab.size
        return ["annotate", "--data", str(p["ann_in"]), "--classifier", str(p["clf"]), "--epoch",
                "1", "--name", f"a{i}", "--grid", s.grid, "--num-draws", str(s.draws)]  # fmt: skip

    def inputs(self) -> Inputs:
        src = self.paths["ann_in"]
        meta = json.loads((src / "meta.json").read_text())
        sizes = {s["key"]: (src / s["key"]).stat().st_size for s in meta["shards"]}
        return {(meta["name"], s["key"]): (s["rows"], sizes[s["key"]]) for s in meta["shards"]}

    def check(self, i: str) -> list[str]:
        return annotation_violations(self.root(i), self.inputs(), {})

    def snapshot(self, i: str) -> dict[str, int]:
        return count(self.root(i), done="done/**/*.json", shards="shards/**/*.parquet",
                     manifests="manifests/v*.json")  # fmt: skip


class Watcher(Annotator):
    """`ambient watch --once` with new one-episode shards waiting, killed; recovered by the
    next passes (until one commits or finds nothing new), after which one more pass must find
    nothing new (exit 3). One annotation across all attempts, so its versions keep growing."""

    name = "watcher"

    def __init__(self, lab: Lab, paths: dict[str, Path], timeout: float) -> None:
        super().__init__(lab, paths, timeout)
        self.pool = read_dataset(paths["pool"])[1]
        self.landed = 0
        self.seen: dict[str, str] = {}  # manifest -> sha256 when first seen (create-only)

    def root(self, i: str) -> Path:
        return self.lab.home / "annotations" / "watch"

    def before(self, i: str) -> None:
        """Land shards the way a producer does: write aside, then rename into data/."""
        eps = sorted(set(self.pool.column("episode_index").to_pylist()))
        for j in range(self.lab.size.new_shards):
            t = self.pool.filter(pc.equal(self.pool["episode_index"], eps[self.landed % len(eps)]))
            idx = pa.array([1000 + self.landed] * t.num_rows, t.schema.field("episode_index").type)
            t = t.set_column(t.schema.get_field_index("episode_index"), "episode_index", idx)
            dest = self.paths["watch_src"] / "data" / f"chaos-{i}-{j}.parquet"
            pq.write_table(t, dest.with_suffix(".tmp"))
            os.replace(dest.with_suffix(".tmp"), dest)
            self.landed += 1

    def command(self, i: str) -> list[str]:
        return ["watch", "--config", str(self.paths["watch"]), "--once"]

    def recover(self, i: str, rc: int) -> tuple[Steps, list[str]]:
        steps: Steps = []
        bad = []
        if rc not in (0, 3):
            steps, rc, err = self.until(self.command(i), i, (0, 3), tries=4)
            if any(s[1] == 4 for s in steps):
                bad.append("a pass after the kill reported busy: the dead watcher's lease held")
            if rc not in (0, 3):
                return steps, [*bad, f"not recovered after {len(steps)} passes: {err}"]
        more, rc, err = self.until(self.command(i), i, (3,), tries=1)
        if rc != 3:
            bad.append(f"the pass after recovery exited {rc}, not 3 (up to date): {err}")
        return steps + more, bad

    def inputs(self) -> Inputs:
        files = sorted((self.paths["watch_src"] / "data").glob("*.parquet"))
        return {
            ("rrt", f"data/{f.name}"): (pq.read_metadata(f).num_rows, f.stat().st_size)
            for f in files
        }

    def check(self, i: str) -> list[str]:
        return annotation_violations(self.root(i), self.inputs(), self.seen)


# ------------------------------------------------------------------------------ the run


def kill_at(target: Target, job: Job, at: float, scope: str, rng: random.Random) -> dict[str, Any]:
    """At ``at`` s after the start (or the first moment after it that the target has a
    victim), kill -9; ``landed`` is False when the command ended first."""
    while job.proc.poll() is None and (elapsed := time.monotonic() - job.t0) < target.timeout:
        if elapsed >= at and (v := target.victim(job, rng)) is not None:
            n = target.lab.kill9(v[0], scope)
            return {"landed": True, "at_s": round(elapsed, 2), "what": v[1], "killed": n}
        time.sleep(0.2 if elapsed >= at else min(0.5, max(0.02, at - elapsed)))
    return {"landed": False, "at_s": round(time.monotonic() - job.t0, 2)}


def attempt(target: Target, i: int, expected: float, a: argparse.Namespace) -> dict[str, Any]:
    """One kill, its recovery, the invariants; every draw comes from (seed, target, i)."""
    lab, tag = target.lab, str(i)
    rng = random.Random(f"{a.seed}:{target.name}:{i}")
    at, scope = rng.uniform(0, expected), rng.choice(target.scopes)
    target.before(tag)
    job = lab.start(target.command(tag), f"{target.name}-{i}")
    kill = kill_at(target, job, at, scope, rng)
    state = target.snapshot(tag) if kill["landed"] else {}
    rc = lab.wait(job, target.timeout)
    bad = [f"orphans after the kill: {o}" for o in lab.settle(a.grace)]
    steps, failed = target.recover(tag, rc)
    bad += failed + target.check(tag)
    bad += [f"orphans after recovery: {o}" for o in lab.settle(a.grace)]
    rec = {"attempt": i, "window_s": round(expected, 1), "draw_s": round(at, 2), "scope": scope}
    rec |= {**kill, "rc": rc}
    done = not any(f.startswith("not recovered") for f in failed)
    rec |= {"state": state, "recovery": steps, "recovered": done, "violations": bad}
    rec["wall_s"] = round(time.monotonic() - job.t0, 1)
    log.info("%s #%d: %s", target.name, i, json.dumps(rec))
    return rec


def calibrate(target: Target, a: argparse.Namespace) -> tuple[float, list[str]]:
    """One uncut run: its duration is the kill window; its invariants are the baseline."""
    target.before("c")
    rc, took, job = target.lab.run(target.command("c"), f"{target.name}-calibrate", target.timeout)
    if rc not in (0, 3):
        raise RuntimeError(f"calibration of {target.name} failed ({rc}): {job.last_error()}")
    bad = target.check("c") + [f"orphans: {o}" for o in target.lab.settle(a.grace)]
    log.info("%s: calibration run %.0f s, %d violations", target.name, took, len(bad))
    return took, bad


def run_target(
    target: Target, expected: float, a: argparse.Namespace, res: dict[str, Any]
) -> None:
    """The target's series; ``res`` is filled as attempts finish (kept on Ctrl-C). A command
    that ends before its kill narrows the window to its duration (load varies)."""
    res |= {"expected_s": round(expected, 1), "attempts": 0, "kills_landed": 0, "recovered": 0}
    res |= {"violations": [], "runs": [], "mean_attempt_s": 0.0}
    window = expected
    for i in [a.attempt] if a.attempt is not None else range(a.kills):
        rec = attempt(target, i, window, a)
        window = window if rec["landed"] else max(1.0, min(window, rec["at_s"]))
        res["runs"].append(rec)
        res["attempts"] += 1
        res["kills_landed"] += int(rec["landed"])
        res["recovered"] += int(rec["recovered"])
        where = {"attempt": i, "at_s": rec["at_s"], "scope": rec["scope"], "state": rec["state"]}
        again = f"--targets {target.name} --seed {a.seed} --attempt {i} --durations "
        where["again"] = again + f"{target.name}={rec['window_s']}" + " --small" * a.small
        res["violations"] += [{**where, "detail": v} for v in rec["violations"]]
        res["mean_attempt_s"] = round(sum(r["wall_s"] for r in res["runs"]) / res["attempts"], 1)


def chaos(a: argparse.Namespace, lab: Lab, report: dict[str, Any]) -> None:
    t0 = time.monotonic()
    paths = build_world(lab, a.targets, a.timeout)
    report["setup_s"] = round(time.monotonic() - t0, 1)
    kinds = {"driver": Driver, "worker": Worker, "annotator": Annotator, "watcher": Watcher}
    targets = {t: kinds[t](lab, paths, a.timeout) for t in a.targets}
    windows: dict[str, float] = {}
    for name, target in targets.items():
        known = a.durations.get(name) or (windows.get("driver") if name == "worker" else None)
        if known is None:
            windows[name], bad = calibrate(target, a)
            report["baseline_violations"] += [f"{name}: {b}" for b in bad]
        else:
            windows[name] = known
    report["windows_s"] = {k: round(v, 1) for k, v in windows.items()}
    for kills in sorted({a.kills, 20}):
        # A kill lands at half the window on average and recovery reruns about a whole one.
        est = sum(kills * (1.5 * w + 15) for w in windows.values())
        log.info("estimate for --kills %d: %.0f min (from the windows)", kills, est / 60)
    for name, target in targets.items():
        run_target(target, windows[name], a, report["targets"].setdefault(name, {}))
    means = sum(r["mean_attempt_s"] for r in report["targets"].values())
    report["estimate_kills_20_s"] = round(report["setup_s"] + 20 * means)
    temps = sum(1 for _ in lab.home.rglob(".~tmp-*"))  # storage's temp files: kill -9 debris
    report["notes"] = {"mlflow_runs_left_running": running_runs(lab.uri), "temp_files": temps}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    p.add_argument("--kills", type=int, default=20, help="kill attempts per target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--durations", default="", help="kill windows, s: driver=90,annotator=40")
    p.add_argument("--attempt", type=int, default=None, help="only this attempt (reproduce one)")
    p.add_argument("--small", action="store_true", help="the test suite's tiny world")
    p.add_argument("--grace", type=float, default=30.0, help="s a killed run's processes have")
    p.add_argument("--timeout", type=float, default=900.0, help="s per command")
    p.add_argument("--work", type=Path, default=ROOT / ".work" / "chaos")
    p.add_argument("--rm", action="store_true", help="delete the run's directory if all is well")
    a = p.parse_args(argv)
    a.targets = [t for t in a.targets.split(",") if t]
    if unknown := set(a.targets) - set(TARGETS):
        p.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    a.durations = {k: float(v) for k, v in (d.split("=") for d in a.durations.split(",") if d)}
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    fmt = "%(asctime)s chaos: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S")
    lab = Lab(a.work, a.seed, SMALL if a.small else Size())
    log.info("run dir %s (commands' output in logs/), Ray temp %s", lab.dir, lab.ray_tmp)
    report: dict[str, Any] = {"seed": a.seed, "kills": a.kills, "small": a.small}
    report |= {"run_dir": str(lab.dir), "targets": {}, "baseline_violations": []}
    status, t0 = 0, time.monotonic()

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)  # also when started with SIGINT ignored (`cmd &`)
    try:
        chaos(a, lab, report)
    except KeyboardInterrupt:
        status, report["interrupted"] = 130, True
    except RuntimeError as exc:
        status, report["setup_error"] = 2, str(exc)
    finally:
        lab.cleanup()
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    found = [*report["baseline_violations"]]
    for res in report["targets"].values():
        found += res["violations"]
    report["violations"] = len(found)
    (lab.dir / "report.json").write_text(json.dumps(report, indent=1))
    keys = ("attempts", "kills_landed", "recovered", "expected_s", "mean_attempt_s")
    brief = {k: v for k, v in report.items() if k != "targets"}
    brief["targets"] = {n: {k: r[k] for k in keys} for n, r in report["targets"].items()}
    for n, r in report["targets"].items():
        brief["targets"][n]["violations"] = r["violations"]
    print(json.dumps(brief, indent=1))
    status = status or int(bool(found))
    if status == 0 and a.rm:
        shutil.rmtree(lab.dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
