"""Chaos run: kill -9 the sweep driver, a trial worker, the annotator and the watcher at seeded
random moments, recover the way a user would, and check what recovery promises. Prints JSON.

Why: kill -9 recovery is a design goal of `ambient sweep`, `ambient annotate` and `ambient
watch` (README, sweeps/README.md); a handful of hand-placed kills in the unit tests cannot show
that it holds at *any* moment. Each target is killed N times (`--kills`, default 20) at a moment
drawn uniformly over its expected duration (a calibration run measures it), then recovered
(`sweep resume`, the same `annotate` again, the next `watch --once` pass) and checked:

- sweeps: every trial exactly once in MLflow (child runs of the one parent, unique by Ray trial
  id and by configuration + seed), all FINISHED (none left RUNNING), the final evaluation logged
  once per trial, no second or stray parent;
- annotations: manifest versions contiguous, every committed manifest unchanged later
  (create-only), output digests and row counts as recorded, each input shard exactly once,
  annotated rows == input rows, each (episode, frame) once, no done markers or lease left;
- processes: nothing the run started survives a grace period after a kill or a recovery.

Everything runs in its own world (AMBIENT_HOME under .work/chaos/, SQLite MLflow, a short Ray
temp dir) through the real `ambient` CLI, each command in a session of its own; every process
carries AMBIENT_CHAOS_RUN in its environment (Ray's daemons and workers inherit it), which is how
orphans are found and why only our processes are ever killed, also on Ctrl-C.
Exit status: 0 no violation, 1 violations, 2 the world could not be set up, 130 interrupted.

Usage: .venv/bin/python benchmarks/chaos.py [--kills 20] [--seed 0]
         [--targets driver,worker,annotator,watcher] [--durations annotator=60,...] [--attempt I]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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

ROOT = Path(__file__).resolve().parents[1]
MARK = "AMBIENT_CHAOS_RUN"
TARGETS = ("driver", "worker", "annotator", "watcher")
GRID = "0,10,20,30,40,50,60,70,80,90,99"
QUIET = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PYTHONUNBUFFERED": "1",
}
_cli = Path(sys.executable).with_name("ambient")
AMBIENT = [str(_cli)] if _cli.exists() else [sys.executable, "-m", "orchestrator.cli"]
log = logging.getLogger("chaos")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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

    def __init__(self, work: Path, seed: int) -> None:
        self.token = uuid.uuid4().hex[:10]
        stamp = time.strftime("%m%d-%H%M%S")
        self.dir = (work / f"run-s{seed}-{stamp}-{self.token[:4]}").resolve()
        self.home, self.logs = self.dir / "home", self.dir / "logs"
        self.ray_tmp = Path(f"/tmp/chx-{self.token}")  # Ray's socket paths need a short root
        self.home.mkdir(parents=True)
        self.logs.mkdir()
        self.uri = f"sqlite:///{self.home / 'mlflow.db'}"
        drop = ("RAY_ADDRESS", "AMBIENT_STORAGE", "MLFLOW_TRACKING_URI", "AMBIENT_DEBUG")
        self.env = {k: v for k, v in os.environ.items() if k not in drop}
        self.env.update(QUIET)
        self.env.update(
            AMBIENT_HOME=str(self.home),
            MLFLOW_TRACKING_URI=self.uri,
            RAY_TMPDIR=str(self.ray_tmp),
            MPLCONFIGDIR=str(self.dir / "mpl"),
            **{MARK: self.token},
        )
        self.n = 0

    def start(self, args: list[str], tag: str) -> Job:
        self.n += 1
        path = self.logs / f"{self.n:03d}-{tag}.log"
        cmd = [*AMBIENT, *args]
        with open(path, "wb") as out:
            out.write((" ".join(cmd) + "\n").encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
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
        """Live processes of this run: marked environment, or Ray's temp dir on the command
        line (zombies are their parent's business)."""
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            with contextlib.suppress(psutil.Error, OSError):
                if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                    continue
                cmd = " ".join(p.info["cmdline"] or [])
                if str(self.ray_tmp) in cmd or p.environ().get(MARK) == self.token:
                    found.append(p)
        return found

    def kill9(self, pid: int, scope: str) -> int:
        """kill -9 ``pid`` alone, or its whole session: the process group it leads plus Ray's
        workers, which run in process groups of their own inside it. Returns how many."""
        victims = {pid}
        if scope == "session":
            with contextlib.suppress(OSError):
                sid = os.getsid(pid)
                for p in self.ours():
                    with contextlib.suppress(OSError):
                        if os.getsid(p.pid) == sid:
                            victims.add(p.pid)
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


# ------------------------------------------------------------------------------ data


def write_dataset(
    src_meta: dict[str, Any], table: pa.Table, out: Path, per: int, name: str
) -> None:
    """``table`` as a dataset of ``per``-episode shards, meta.json (the commit point) last;
    the rest of meta.json is what `ambient data generate` wrote."""
    eps = sorted(set(table.column("episode_index").to_pylist()))
    (out / "data").mkdir(parents=True, exist_ok=True)
    shards = []
    for i in range(0, len(eps), per):
        part = table.filter(pc.is_in(table["episode_index"], pa.array(eps[i : i + per])))
        buf = io.BytesIO()
        pq.write_table(part, buf, compression="zstd")
        key = f"data/shard-{i // per:05d}.parquet"
        (out / key).write_bytes(buf.getvalue())
        shards.append({"key": key, "rows": part.num_rows, "sha256": sha256(buf.getvalue())})
    meta = {**src_meta, "name": name, "episodes": len(eps), "shards": shards}
    meta["frames"] = sum(s["rows"] for s in shards)
    meta["digest"] = sha256("".join(s["sha256"] for s in shards).encode())
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def read_dataset(root: Path) -> tuple[dict[str, Any], pa.Table]:
    meta = json.loads((root / "meta.json").read_text())
    return meta, pa.concat_tables([pq.read_table(root / s["key"]) for s in meta["shards"]])


def build_world(lab: Lab, targets: list[str], timeout: float) -> dict[str, Path]:
    """Maze data, the annotate input (20 two-episode shards), the watch source, a tiny
    classifier, the sweep spec and the watch file."""
    home, paths = lab.home, {}
    maze = home / "data" / "maze"
    steps = [["data", "generate", "maze", "--clean", "8", "--corrupt", "40", "--out", str(maze)]]
    if {"annotator", "watcher"} & set(targets):
        steps.append(
            ["classifier", "train", "--data", str(maze / "clean"), "--corrupt",
             str(maze / "corrupt"), "--epochs", "1", "--steps-per-epoch", "10",
             "--batch-size", "32", "--out", str(home / "classifiers" / "tiny")]
        )  # fmt: skip
    for args in steps:
        rc, took, job = lab.run(args, "setup", timeout)
        if rc != 0:
            raise RuntimeError(f"`ambient {' '.join(args[:2])}` failed ({rc}): {job.last_error()}")
        log.info("setup: ambient %s (%.0f s)", " ".join(args[:2]), took)
    meta, table = read_dataset(maze / "corrupt")
    paths["ann_in"] = home / "data" / "ann-in"
    write_dataset(meta, table, paths["ann_in"], 2, "corrupt")
    paths["watch_src"] = home / "data" / "watch-src"
    first = table.filter(pc.less(table["episode_index"], 2))
    write_dataset(meta, first, paths["watch_src"], 2, "rrt")
    paths["pool"] = maze / "corrupt"
    paths["clf"] = home / "classifiers" / "tiny"
    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec.update(
        name="chaos",
        base_config=str(ROOT / "sweeps" / "train" / "bin_sorting_ambient.yaml"),
        scheduler={"kind": "none"},  # every trial runs every round: a fixed set to account for
        experiment="sweep-chaos",
    )
    paths["spec"] = lab.dir / "sweep.yaml"
    paths["spec"].write_text(yaml.safe_dump(spec, sort_keys=False))
    watch = {
        "name": "watch",
        "sources": [str(paths["watch_src"])],
        "out": str(home / "annotations" / "watch"),
        "classifier": str(paths["clf"]),
        "epochs": [1],
        "grid_levels": [int(x) for x in GRID.split(",")],
        "num_draws": 2,
        "schedule": {"interval_s": 60},
        "lease_ttl_s": 120,
        "experiment": "annotation-chaos",
    }
    paths["watch"] = lab.dir / "watch.yaml"
    paths["watch"].write_text(yaml.safe_dump(watch, sort_keys=False))
    return paths


# ------------------------------------------------------------------------------ invariants


def annotation_violations(
    root: Path, inputs: dict[tuple[str, str], tuple[int, int]], seen: dict[str, str]
) -> list[str]:
    """Manifests contiguous and create-only; the latest names each input (dataset, key) ->
    (rows, size) once, with matching digests, rows and unique (episode, frame) keys."""
    files = {
        int(f.stem[1:]): f for f in (root / "manifests").glob("v*.json") if f.stem[1:].isdigit()
    }
    versions = sorted(files)
    if not versions:
        return [f"{root.name}: no manifest committed"]
    bad = [] if versions == list(range(1, len(versions) + 1)) else [f"versions {versions}"]
    manifests = {}
    for v in versions:
        data = files[v].read_bytes()
        if seen.setdefault(str(files[v]), sha256(data)) != sha256(data):
            bad.append(f"v{v}.json changed after it was committed (not create-only)")
        m = manifests[v] = json.loads(data)
        if m.get("version") != v or m.get("previous") != (v - 1 if v > 1 else None):
            bad.append(f"v{v}.json says version {m.get('version')}, previous {m.get('previous')}")
        prev = (m.get("lineage") or {}).get("previous_manifest")
        if prev is not None and not str(prev).endswith(f"v{v - 1}.json"):
            bad.append(f"v{v}.json: lineage.previous_manifest is {prev}")
        if m.get("settings_digest") != manifests[versions[0]].get("settings_digest"):
            bad.append(f"v{v}.json: settings digest differs from v{versions[0]}")
    bad += shard_violations(root, manifests[versions[-1]], inputs)
    markers = sorted(str(p.relative_to(root)) for p in (root / "done").rglob("*.json"))
    if markers:
        bad.append(f"done markers left after the commit: {markers[:3]} ({len(markers)})")
    if (root / "leases" / "watch.json").exists():
        bad.append(
            f"lease still held after the last run ended: {_read(root / 'leases/watch.json')}"
        )
    return [f"{root.name}: {b}" for b in bad]


def _read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text()[:200]
    return "?"


def shard_violations(
    root: Path, m: dict[str, Any], inputs: dict[tuple[str, str], tuple[int, int]]
) -> list[str]:
    bad, keys, out_rows, dup_rows = [], set(), 0, 0
    ids = [(e["dataset"], e["input_key"]) for e in m["shards"]]
    if len(ids) != len(set(ids)):
        bad.append(
            f"v{m['version']}: shards named twice: {sorted({i for i in ids if ids.count(i) > 1})}"
        )
    if set(ids) != set(inputs):
        missing, extra = sorted(set(inputs) - set(ids)), sorted(set(ids) - set(inputs))
        bad.append(f"v{m['version']}: inputs missing {missing[:5]}, unknown {extra[:5]}")
    for e in m["shards"]:
        path = root / e["output_key"]
        if not path.exists():
            bad.append(f"{e['output_key']} named in v{m['version']} does not exist")
            continue
        data = path.read_bytes()
        if sha256(data) != e["sha256"]:
            bad.append(f"{e['output_key']}: sha256 differs from v{m['version']}")
        t = pq.read_table(io.BytesIO(data), columns=["episode_index", "frame_index"])
        rows, size = inputs.get((e["dataset"], e["input_key"]), (t.num_rows, e["input_size"]))
        if not t.num_rows == e["rows"] == rows or size != e["input_size"]:
            bad.append(f"{e['output_key']}: {t.num_rows} rows, manifest {e['rows']}, input {rows}")
        pairs = {
            (e["dataset"], a, b) for a, b in zip(*(c.to_pylist() for c in t.columns), strict=True)
        }
        dup_rows += len(pairs & keys) + t.num_rows - len(pairs)
        keys |= pairs
        out_rows += t.num_rows
    total = sum(r for r, _ in inputs.values())
    if out_rows != total or dup_rows:
        bad.append(f"annotated rows {out_rows} != input rows {total} ({dup_rows} duplicated)")
    return bad


def sweep_violations(uri: str, sweep_dir: Path) -> list[str]:
    """One FINISHED parent; exactly one FINISHED child per trial (Ray trial id and
    configuration + seed unique), final evaluation once each; no stray or RUNNING run."""
    from mlflow import MlflowClient

    name = sweep_dir.name
    info_file = sweep_dir / "ambient_sweep.json"
    if not info_file.exists():
        return [f"{name}: no {info_file.name} after recovery"]
    info = json.loads(info_file.read_text())
    parent_id, n = info["parent_run_id"], int(info["n_trials"])
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.sweep = '{name}'", max_results=5000)
    bad = []
    for r in runs:
        kind, parent = r.data.tags.get("kind"), r.data.tags.get("mlflow.parentRunId")
        if r.info.run_id == parent_id and r.info.status != "FINISHED":
            bad.append(f"parent run {parent_id} is {r.info.status}")
        elif r.info.run_id != parent_id and (kind == "sweep" or parent != parent_id):
            bad.append(f"stray run {r.info.run_id} ({r.info.run_name}, {kind}, {r.info.status})")
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    trial_ids = [k.data.tags.get("ray_trial_id") for k in kids]
    points = [
        (tuple(k.data.params.get(p) for p in info.get("paths", [])), k.data.tags.get("seed"))
        for k in kids
    ]
    if len(kids) != n or len(set(trial_ids)) != n or len(set(points)) != n:
        bad.append(f"{len(kids)} child runs, {len(set(trial_ids))} trial ids, "
                   f"{len(set(points))} configurations (expected {n} each)")  # fmt: skip
    for k in kids:
        if k.info.status != "FINISHED":
            bad.append(f"trial run {k.info.run_id} ({k.info.run_name}) is {k.info.status}")
        if k.data.tags.get("stopped_early") == "true":
            continue
        for key in (m for m in k.data.metrics if m.startswith("eval/")):
            count = len(client.get_metric_history(k.info.run_id, key))
            if count != 1:
                bad.append(f"trial run {k.info.run_id}: {key} logged {count} times")
    return [f"sweep {name}: {b}" for b in bad]


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

    def recover(self, i: str, rc: int) -> tuple[list[list[Any]], list[str]]:
        """Recovery steps ([args, rc, seconds]) and the violations they showed."""
        raise NotImplementedError

    def check(self, i: str) -> list[str]:
        raise NotImplementedError

    def snapshot(self, i: str) -> dict[str, int]:
        """What the target had written when the kill landed (to reproduce a violation)."""
        return {}

    def _until(
        self, args: list[str], i: str, ok: tuple[int, ...], tries: int = 3
    ) -> tuple[list[list[Any]], int, str]:
        steps, rc, err = [], -1, ""
        for _ in range(tries):
            rc, took, job = self.lab.run(args, f"{self.name}-{i}-recover", self.timeout)
            steps.append(
                [args[0] if args[0] != "sweep" else f"sweep {args[1]}", rc, round(took, 1)]
            )
            if rc in ok:
                break
            err = job.last_error()
        return steps, rc, err


class Driver(Target):
    """`ambient sweep run`, killed; recovered with `ambient sweep resume`."""

    name = "driver"

    def sweep_name(self, i: str) -> str:
        return f"{self.name[0]}{i}"

    def sweep_dir(self, i: str) -> Path:
        return self.lab.home / "sweeps" / self.sweep_name(i)

    def command(self, i: str) -> list[str]:
        return ["sweep", "run", str(self.paths["spec"]), "--name", self.sweep_name(i)]

    def recover(self, i: str, rc: int) -> tuple[list[list[Any]], list[str]]:
        steps: list[list[Any]] = []
        while rc != 0 and len(steps) < 3:
            verb = "resume" if (self.sweep_dir(i) / "ambient_sweep.json").exists() else "run"
            args = ["sweep", verb, str(self.paths["spec"]), "--name", self.sweep_name(i)]
            more, rc, err = self._until(args, i, (0,), tries=1)
            steps += more
        return steps, [] if rc == 0 else [f"not recovered after {len(steps)} tries: {err}"]

    def check(self, i: str) -> list[str]:
        return sweep_violations(self.lab.uri, self.sweep_dir(i))

    def snapshot(self, i: str) -> dict[str, int]:
        d = self.sweep_dir(i)
        return {
            "info": int((d / "ambient_sweep.json").exists()),
            "trials": len(list(d.glob("trial_*"))),
            "checkpoints": len(list(d.glob("trial_*/checkpoint_*"))),
        }


class Worker(Driver):
    """A Ray worker running a trial (`ray::ImplicitFunc.train`), killed by PID; Tune retries the
    trial (max_failures), else `sweep resume` finishes it."""

    name = "worker"
    scopes = ("pid",)

    def victim(self, job: Job, rng: random.Random) -> tuple[int, str] | None:
        with contextlib.suppress(OSError):
            sid = os.getsid(job.proc.pid)
            found = []
            for p in self.lab.ours():
                with contextlib.suppress(psutil.Error, OSError):
                    cmd = " ".join(p.cmdline())
                    if os.getsid(p.pid) == sid and "ImplicitFunc" in cmd:
                        found.append((p.pid, cmd.split()[0]))
            if found:
                return rng.choice(sorted(found))
        return None


class Annotator(Target):
    """`ambient annotate` over 20 shards into a fresh root, killed; recovered by running it
    again."""

    name = "annotator"

    def root(self, i: str) -> Path:
        return self.lab.home / "annotations" / f"a{i}"

    def command(self, i: str) -> list[str]:
        p = self.paths
        return ["annotate", "--data", str(p["ann_in"]), "--classifier", str(p["clf"]),
                "--epoch", "1", "--name", f"a{i}", "--grid", GRID, "--num-draws", "2"]  # fmt: skip

    def recover(self, i: str, rc: int) -> tuple[list[list[Any]], list[str]]:
        if rc == 0:
            return [], []
        steps, rc, err = self._until(self.command(i), i, (0,))
        return steps, [] if rc == 0 else [f"not recovered after {len(steps)} tries: {err}"]

    def inputs(self) -> dict[tuple[str, str], tuple[int, int]]:
        src = self.paths["ann_in"]
        meta = json.loads((src / "meta.json").read_text())
        return {
            (meta["name"], s["key"]): (s["rows"], (src / s["key"]).stat().st_size)
            for s in meta["shards"]
        }

    def check(self, i: str) -> list[str]:
        return annotation_violations(self.root(i), self.inputs(), {})

    def snapshot(self, i: str) -> dict[str, int]:
        r = self.root(i)
        return {
            "done": len(list(r.glob("done/**/*.json"))),
            "shards": len(list(r.glob("shards/**/*.parquet"))),
            "manifests": len(list(r.glob("manifests/v*.json"))),
        }


class Watcher(Annotator):
    """`ambient watch --once` while 4 new one-episode shards wait, killed; recovered by the
    next passes (until one commits or finds nothing new), after which a further pass must find
    nothing new. One annotation across all attempts, so its versions keep growing."""

    name = "watcher"
    new_shards = 4

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
        for j in range(self.new_shards):
            ep = eps[self.landed % len(eps)]
            t = self.pool.filter(pc.equal(self.pool["episode_index"], ep))
            idx = pa.array([1000 + self.landed] * t.num_rows, t.schema.field("episode_index").type)
            t = t.set_column(t.schema.get_field_index("episode_index"), "episode_index", idx)
            dest = self.paths["watch_src"] / "data" / f"chaos-{i}-{j}.parquet"
            tmp = dest.with_suffix(".tmp")
            pq.write_table(t, tmp)
            os.replace(tmp, dest)
            self.landed += 1

    def command(self, i: str) -> list[str]:
        return ["watch", "--config", str(self.paths["watch"]), "--once"]

    def recover(self, i: str, rc: int) -> tuple[list[list[Any]], list[str]]:
        steps: list[list[Any]] = []
        bad = []
        if rc not in (0, 3):
            more, rc, err = self._until(self.command(i), i, (0, 3), tries=4)
            steps += more
            if any(s[1] == 4 for s in more):
                bad.append("a pass after the kill reported busy: the dead watcher's lease held")
            if rc not in (0, 3):
                return steps, [*bad, f"not recovered after {len(steps)} passes: {err}"]
        more, rc, err = self._until(self.command(i), i, (3,), tries=1)
        if rc != 3:
            bad.append(f"the pass after recovery exited {rc}, not 3 (up to date): {err}")
        return steps + more, bad

    def inputs(self) -> dict[tuple[str, str], tuple[int, int]]:
        files = sorted((self.paths["watch_src"] / "data").glob("*.parquet"))
        return {
            ("rrt", f"data/{f.name}"): (pq.read_metadata(f).num_rows, f.stat().st_size)
            for f in files
        }

    def check(self, i: str) -> list[str]:
        return annotation_violations(self.root(i), self.inputs(), self.seen)


# ------------------------------------------------------------------------------ the run


def kill_at(
    lab: Lab, target: Target, job: Job, at: float, scope: str, rng: random.Random
) -> dict[str, Any]:
    """Wait until ``at`` s after the start, then kill -9 the target's victim (the first moment
    after ``at`` that it has one); ``landed`` is False when the command ended first."""
    while job.proc.poll() is None:
        elapsed = time.monotonic() - job.t0
        if elapsed >= at and (v := target.victim(job, rng)) is not None:
            pid, what = v
            n = lab.kill9(pid, scope)
            return {
                "landed": True,
                "at_s": round(elapsed, 2),
                "pid": pid,
                "what": what,
                "killed": n,
            }
        if elapsed > target.timeout:
            break
        time.sleep(0.2 if elapsed >= at else min(0.5, max(0.02, at - elapsed)))
    return {"landed": False, "at_s": round(time.monotonic() - job.t0, 2)}


def attempt(target: Target, i: int, expected: float, a: argparse.Namespace) -> dict[str, Any]:
    """One kill, one recovery, the invariants; every draw comes from (seed, target, i)."""
    lab, tag = target.lab, str(i)
    rng = random.Random(f"{a.seed}:{target.name}:{i}")
    at, scope = rng.uniform(0, expected), rng.choice(target.scopes)
    target.before(tag)
    job = lab.start(target.command(tag), f"{target.name}-{i}")
    kill = kill_at(lab, target, job, at, scope, rng)
    state = target.snapshot(tag) if kill["landed"] else {}
    rc = lab.wait(job, target.timeout)
    bad = [f"orphans after the kill: {o}" for o in lab.settle(a.grace)]
    steps, more = target.recover(tag, rc)
    bad += more + target.check(tag)
    bad += [f"orphans after recovery: {o}" for o in lab.settle(a.grace)]
    rec = {"attempt": i, "draw_s": round(at, 2), "scope": scope, **kill, "rc": rc}
    rec.update(state=state, recovery=steps, recovered=not more, violations=bad)
    rec["wall_s"] = round(time.monotonic() - job.t0, 1)
    log.info(
        "%s #%d: %s", target.name, i, json.dumps({k: v for k, v in rec.items() if k != "recovery"})
    )
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


def run_target(target: Target, expected: float, a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"expected_s": round(expected, 1), "attempts": 0, "kills_landed": 0}
    res.update(recovered=0, violations=[], runs=[])
    indices = [a.attempt] if a.attempt is not None else range(a.kills)
    for i in indices:
        rec = attempt(target, i, expected, a)
        res["runs"].append(rec)
        res["attempts"] += 1
        res["kills_landed"] += int(rec["landed"])
        res["recovered"] += int(rec["recovered"])
        res["violations"] += [
            {"attempt": i, "at_s": rec["at_s"], "scope": rec["scope"], "state": rec["state"],
             "detail": v} for v in rec["violations"]
        ]  # fmt: skip
    walls = [r["wall_s"] for r in res["runs"]]
    res["mean_attempt_s"] = round(sum(walls) / max(1, len(walls)), 1)
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kills", type=int, default=20, help="kill attempts per target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--durations", default="", help="skip calibration: driver=90,annotator=40,...")
    p.add_argument("--attempt", type=int, default=None, help="only this attempt (reproduce one)")
    p.add_argument(
        "--grace", type=float, default=30.0, help="s a killed run's processes may take to end"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="s per command")
    p.add_argument("--work", type=Path, default=ROOT / ".work" / "chaos")
    p.add_argument("--rm", action="store_true", help="delete the run's directory when all is well")
    a = p.parse_args(argv)
    a.targets = [t for t in a.targets.split(",") if t]
    if unknown := set(a.targets) - set(TARGETS):
        p.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    a.durations = {k: float(v) for k, v in (d.split("=") for d in a.durations.split(",") if d)}
    return a


def _estimate(windows: dict[str, float], kills: int, setup_s: float) -> float:
    """A kill lands at half the window on average, the recovery reruns about a whole one, plus
    settling and checks (measured means replace this as attempts finish)."""
    return setup_s + sum(kills * (1.5 * w + 10) for w in windows.values())


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
    for kills in sorted({a.kills, 20}):
        log.info("estimate for --kills %d: %.0f min", kills, _estimate(windows, kills, 0) / 60)
    for name, target in targets.items():
        report["targets"][name] = run_target(target, windows[name], a)
    means = {n: r["mean_attempt_s"] for n, r in report["targets"].items()}
    report["estimate_kills_20_s"] = round(report["setup_s"] + sum(20 * m for m in means.values()))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s chaos: %(message)s", datefmt="%H:%M:%S"
    )
    lab = Lab(a.work, a.seed)
    log.info("work dir %s (logs in logs/), Ray temp %s", lab.dir, lab.ray_tmp)
    report: dict[str, Any] = {"seed": a.seed, "kills": a.kills, "work_dir": str(lab.dir)}
    report.update(targets={}, baseline_violations=[])
    status, t0 = 0, time.monotonic()

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        chaos(a, lab, report)
    except KeyboardInterrupt:
        status, report["interrupted"] = 130, True
    except RuntimeError as exc:
        status, report["setup_error"] = 2, str(exc)
    finally:
        lab.cleanup()
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    report["violations"] = len(report["baseline_violations"]) + sum(
        len(r["violations"]) for r in report["targets"].values()
    )
    summary = {
        n: {k: r[k] for k in ("attempts", "kills_landed", "recovered")}
        for n, r in report["targets"].items()
    }
    for n, r in report["targets"].items():
        summary[n]["violations"] = len(r["violations"])
    report["summary"] = summary
    print(json.dumps(report, indent=1))
    if status == 0 and report["violations"]:
        status = 1
    if status == 0 and a.rm:
        shutil.rmtree(lab.dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
