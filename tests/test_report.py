"""The sweep report on real data: a tiny annotation-driven maze sweep (tau x granularity, two
seeds) whose report numbers are checked against its MLflow child runs, readable MLflow names and
tags, fast status/best, and the HTML rendered by headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
METRIC = "reach_rate"
TAUS = [0.35, 0.45]
GRANULARITIES = ["chunk", "dataset"]
SEEDS = [0, 1]
#: The tiny-model overrides of the sweep tests: seconds per trial on one CPU.
TINY = [
    "policy.down_dims=[16,32]",
    "policy.step_embed_dim=16",
    "train.steps=40",
    "train.batch_size=32",
    "train.warmup_steps=5",
    "train.log_every=10",
    "train.rounds=1",
    "train.threads=1",
    "eval.episodes=4",
    "eval.round_episodes=2",
    "eval.inference_steps=3",
    "eval.max_steps=60",
    "eval.plot=false",
]


def _annotated_maze(d: Path) -> dict[str, str]:
    """Small maze datasets, a 30-step classifier and its annotation of the corrupt data."""
    from ambient_core.envs import maze
    from ambient_platform.config.annotation import AnnotateConfig, ClassifierTrainConfig
    from ambient_platform.datasets import write_dataset
    from ambient_platform.storage import StorageRoot
    from jobs.annotate import annotate
    from jobs.train_classifier import run_classifier_training

    clean, corrupt = maze.generate(maze.MazeEnv(), 8, 24, seed=0, clean_method="builtin")
    write_dataset(StorageRoot(str(d / "clean")), clean, "clean", "maze")
    write_dataset(StorageRoot(str(d / "corrupt")), corrupt, "corrupt", "maze", shard_episodes=12)
    clf = ClassifierTrainConfig(
        clean=[str(d / "clean")],
        corrupt=[str(d / "corrupt")],
        out=str(d / "clf"),
        channels=[8, 16],
        epochs=1,
        steps_per_epoch=30,
        batch_size=32,
    )
    res = run_classifier_training(clf, track=False)
    ann = AnnotateConfig(
        data=[str(d / "corrupt")],
        classifier=res["dir"],
        epochs=[1],
        out=str(d / "ann"),
        grid_levels=[0, 3, 10, 20, 30, 45, 60, 80, 99],
        num_draws=1,
    )
    annotate(ann, track=False)
    return {"clean": str(d / "clean"), "corrupt": str(d / "corrupt"), "ann": str(d / "ann")}


def _spec(d: Path, data: dict[str, str]) -> Path:
    train = d / "train"
    train.mkdir(exist_ok=True)
    for f in (ROOT / "sweeps" / "train").glob("*.yaml"):
        (train / f.name).write_text(f.read_text())
    annotation = {"path": data["ann"], "epoch": 1, "tau": 0.45, "granularity": "chunk"}
    body = {
        "name": "report-test",
        "base_config": "train/maze_ambient.yaml",
        "overrides": [
            f"data.clean.0.path={data['clean']}",
            f"data.corrupt.0.path={data['corrupt']}",
            "data.generate=null",
            "data.corrupt.0.sigma_min=0.0",
            f"data.corrupt.0.annotation={json.dumps(annotation)}",
            *TINY,
        ],
        "space": {
            "data.corrupt.0.annotation.tau": {"grid": TAUS},
            "data.corrupt.0.annotation.granularity": {"grid": GRANULARITIES},
        },
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "none"},
        "metric": METRIC,
        "mode": "max",
        "seeds": SEEDS,
        "max_concurrent": 2,
        "experiment": "report-test",
    }
    path = d / "report.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def swept(ray_session: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from orchestrator.sweep import run_sweep

    d = tmp_path_factory.mktemp("report")
    spec = _spec(d, _annotated_maze(d))
    uri = f"sqlite:///{d / 'mlflow.db'}"
    storage = str(d / "sweeps")
    res = run_sweep(spec, tracking_uri=uri, storage_path=storage, verbose=0)
    return {"res": res, "spec": spec, "uri": uri, "storage": storage, "dir": d}


def _children(uri: str, parent: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
    )
    return list(runs)


@pytest.mark.timeout(900)
def test_report_numbers_match_child_runs(swept: dict[str, Any]) -> None:
    from scipy import stats

    res = swept["res"]
    assert res["counts"] == {"finished": len(TAUS) * len(GRANULARITIES) * len(SEEDS)}
    report = Path(res["report"])
    data = json.loads((report.parent / "data.json").read_text())
    kids = _children(swept["uri"], res["parent_run_id"])
    assert len(kids) == 8
    by_config: dict[tuple[float, str], list[float]] = {}
    for k in kids:
        point = json.loads(k.data.tags["ambient.sweep.point"])
        key = (
            point["data.corrupt.0.annotation.tau"],
            point["data.corrupt.0.annotation.granularity"],
        )
        by_config.setdefault(key, []).append(k.data.metrics[f"eval/{METRIC}"])
    assert len(data["configs"]) == len(by_config) == 4
    for c in data["configs"]:
        vals = by_config[
            (c["data.corrupt.0.annotation.tau"], c["data.corrupt.0.annotation.granularity"])
        ]
        n = len(vals)
        mean = sum(vals) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        assert c["n"] == n == len(SEEDS)
        assert c["mean"] == pytest.approx(mean)
        assert c["half_width"] == pytest.approx(half, abs=1e-12)
        assert c["ci_low"] == pytest.approx(mean - half) and c["ci_high"] == pytest.approx(
            mean + half
        )
        assert sorted(c["seeds"]) == SEEDS
    # The ranking admits ties: the top config and every one tied with it are marked.
    assert data["configs"][0]["tied_with_top"] is True
    assert "verdict:" in res["headline"] and data["verdict"] in res["headline"]
    ranked = [c["mean"] for c in data["configs"]]
    assert ranked == sorted(ranked, reverse=True)


@pytest.mark.timeout(900)
def test_report_figures_and_readable_mlflow(swept: dict[str, Any]) -> None:
    from mlflow import MlflowClient
    from PIL import Image

    res = swept["res"]
    report = Path(res["report"])
    names = set(json.loads((report.parent / "data.json").read_text())["figures"])
    assert {
        f"{METRIC}_vs_tau.png",
        f"{METRIC}_vs_granularity.png",
        "classifier_p_clean_vs_sigma.png",
        "sigma_min_distribution.png",
    } <= names
    notes = json.loads((report.parent / "data.json").read_text())["notes"]
    # Smoothness is measured over successful rollouts: tiny trials have none, the report says so.
    assert "tradeoff_success_vs_smoothness.png" in names or any("smoothness" in n for n in notes)
    for name in names:
        dpi = Image.open(report.parent / name).info["dpi"]
        assert min(dpi) >= 150, (name, dpi)
    html = report.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # offline
    assert html.count("data:image/png;base64,") == len(names)
    assert 'id="parcoords"' in html and html.count('class="trial"') == 8

    client = MlflowClient(swept["uri"])
    parent = client.get_run(res["parent_run_id"])
    assert parent.data.tags["ambient.kind"] == "sweep"
    assert "report/index.html" in parent.data.tags["mlflow.note.content"]
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/index.html" in arts and f"report/{METRIC}_vs_tau.png" in arts
    exp = client.get_experiment(parent.info.experiment_id)
    assert "ambient.kind" in exp.tags["mlflow.note.content"]
    for k in _children(swept["uri"], res["parent_run_id"]):
        point = json.loads(k.data.tags["ambient.sweep.point"])
        tau, gran = (
            point["data.corrupt.0.annotation.tau"],
            point["data.corrupt.0.annotation.granularity"],
        )
        seed = k.data.tags["seed"]
        assert k.info.run_name == f"tau={tau} granularity={gran} seed={seed}"
        assert k.data.params["sweep.tau"] == str(tau)
        assert k.data.params["sweep.granularity"] == gran
        assert k.data.tags["ambient.kind"] == "trial"
        m = k.data.metrics
        assert 0.0 < m["sigma_min/mean"] <= 1.0 and 0.0 <= m["sigma_min/eligible_share"] <= 1.0
        assert m["sigma_min/p10"] <= m["sigma_min/p50"] <= m["sigma_min/p90"]
        assert len(client.get_metric_history(k.info.run_id, f"eval/{METRIC}")) == 1


_HEAVY_PROBE = (
    "import sys\n"
    "from orchestrator.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "heavy = [m for m in ('ray', 'mlflow', 'torch', 'optuna') if m in sys.modules]\n"
    "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
    "sys.exit(code or 0)\n"
)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter and report which heavy libraries it imported: status
    and best stay fast (< 2 s, see benchmarks) by reading saved files, never Ray or MLflow."""
    return subprocess.run(
        [sys.executable, "-c", _HEAVY_PROBE, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.timeout(900)
def test_status_best_report_without_name(swept: dict[str, Any]) -> None:
    spec, storage = str(swept["spec"]), swept["storage"]
    out = _cli("sweep", "status", spec, "--storage-path", storage)
    assert out.returncode == 0, out.stderr
    assert "FINISHED" in out.stdout and "8 of 8 trials done" in out.stdout
    assert "HEAVY=\n" in out.stderr, out.stderr  # no ray, mlflow, torch or optuna imported
    out = _cli("sweep", "best", spec, "--storage-path", storage)
    assert out.returncode == 0, out.stderr
    assert "verdict:" in out.stdout and "annotation:" in out.stdout
    heavy = out.stderr.rsplit("HEAVY=", 1)[-1].split()
    assert not {"ray", "mlflow", "optuna"} & set(heavy[0].split(",") if heavy else []), out.stderr
    runner = CliRunner()
    res = runner.invoke(main, ["sweep", "status", "nope", "--storage-path", storage])
    assert res.exit_code == 2 and "no sweep named 'nope'" in res.output
    res = runner.invoke(main, ["sweep", "run", spec, "--storage-path", storage])
    assert res.exit_code == 2 and f"ambient sweep resume {spec}`" in res.output
    res = runner.invoke(main, ["sweep", "resume", spec, "--storage-path", storage, "--name", "k3"])
    assert res.exit_code == 2 and f"ambient sweep run {spec} --name k3" in res.output
    # A newer sweep of the same spec (as the demo's demo-<timestamp> names): found without
    # --name; `run --name k2` on it says how to resume it.
    state = json.loads((Path(storage) / "report-test" / "ambient_sweep.json").read_text())
    (Path(storage) / "k2").mkdir()
    state.update(name="k2", created=state["created"] + 1)
    (Path(storage) / "k2" / "ambient_sweep.json").write_text(json.dumps(state))
    try:
        res = runner.invoke(main, ["sweep", "status", spec, "--storage-path", storage])
        assert res.exit_code == 0 and res.output.startswith("sweep k2"), res.output
        res = runner.invoke(
            main, ["sweep", "run", spec, "--storage-path", storage, "--name", "k2"]
        )
        assert res.exit_code == 2 and f"ambient sweep resume {spec} --name k2" in res.output
    finally:
        shutil.rmtree(Path(storage) / "k2")
    out_dir = swept["dir"] / "rebuilt"
    res = runner.invoke(
        main, ["sweep", "report", "report-test", "--storage-path", storage, "--out", str(out_dir)]
    )
    assert res.exit_code == 0, res.output
    again = json.loads((out_dir / "data.json").read_text())
    first = json.loads((Path(swept["res"]["report"]).parent / "data.json").read_text())
    assert again["configs"] == first["configs"]


@pytest.mark.timeout(300)
def test_report_renders_in_headless_chromium(swept: dict[str, Any], tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    report = Path(swept["res"]["report"])
    flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    ).stdout
    m = re.search(r'data-figures="(\d+)/(\d+)"', dom)
    assert m, "the page's load check did not run"
    figures = json.loads((report.parent / "data.json").read_text())["figures"]
    assert m.group(1) == m.group(2) == str(len(figures)) and len(figures) >= 4  # all decoded
    assert int(re.search(r'data-parcoords="(\d+)"', dom).group(1)) == 8  # type: ignore[union-attr]
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, "--window-size=1200,3000", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert shot.stat().st_size > 50_000


def test_report_from_synthetic_results(tmp_path: Path) -> None:
    """Every figure from results with real spread (no sweep): trade-off with its Pareto front,
    importance, the ranking's ties, numeric and categorical axes."""
    import numpy as np

    from ambient_platform.config.naming import short_keys
    from orchestrator.sweep.report import build_report
    from orchestrator.sweep.results import Results, TrialRow, aggregate, best_record, rank
    from orchestrator.sweep.state import SweepIndex, SweepInfo

    paths = ["data.corrupt.0.sigma_min", "mixing.pool"]
    metrics = ["success_rate", "reach_rate", "mean_sq_accel", "mean_sq_jerk", "train_loss"]
    info = SweepInfo(
        name="synthetic",
        parent_run_id="p",
        tracking_uri="sqlite://",
        experiment="e",
        spec="s.yaml",
        spec_digest="",
        created=0.0,
        task="maze",
        metric="success_rate",
        mode="max",
        paths=paths,
        labels=short_keys(paths),
        seeds=[0, 1, 2],
        n_trials=24,
        space={paths[0]: {"values": [0.0251, 0.0737, 0.1824, 0.4616]}, paths[1]: {}},
        metrics=metrics,
    )
    rng = np.random.default_rng(0)
    rows = []
    for sm in [0.0251, 0.0737, 0.1824, 0.4616]:
        for pool in ["proportional", "soft"]:
            for seed in info.seeds:
                m = {k: float(rng.uniform()) for k in metrics}
                m["success_rate"] = 0.8 - abs(np.log(sm / 0.07)) * 0.2 + rng.normal(0, 0.03)
                m["mean_sq_accel"] = 10 + 30 * sm + float(rng.normal(0, 1))
                m["mean_sq_jerk"] = 1000 + 3000 * sm + float(rng.normal(0, 100))
                rid = f"r{len(rows)}"
                params = {paths[0]: sm, paths[1]: pool}
                rows.append(
                    TrialRow(rid, rid, rid, "FINISHED", "finished", params, seed, 1, True, m, 9.0)
                )
    configs = aggregate(info, rows)
    ranking = rank(info, configs)
    res = Results(info, rows, configs, ranking, best_record(info, ranking), {"finished": 24})
    report = build_report(info, tmp_path / "r", SweepIndex(state="FINISHED", n_trials=24), res)
    names = {f.file.name for f in report.figures}
    assert {
        "success_rate_vs_sigma_min.png",
        "success_rate_vs_pool.png",
        "tradeoff_success_vs_smoothness.png",
        "parameter_importance.png",
    } <= names
    data = json.loads((tmp_path / "r" / "data.json").read_text())
    assert set(data["importance"]["values"]) == {"sigma_min", "pool"}
    assert data["importance"]["values"]["sigma_min"] > data["importance"]["values"]["pool"]
    top = data["configs"][0]
    assert top["data.corrupt.0.sigma_min"] == 0.0737 and top["n"] == 3
    # the two pools at the best sigma_min are within noise of each other: a tie, not a winner
    assert data["configs"][1]["data.corrupt.0.sigma_min"] == 0.0737
    assert data["configs"][1]["tied_with_top"] and "not separable" in data["verdict"]
    assert report.index.read_text().count("<tr") == 1 + 8 + 1 + 24  # ranking, trials


def test_annotation_figures_when_only_a_swept_value_has_the_annotation(
    swept: dict[str, Any], tmp_path: Path
) -> None:
    """The demo sweeps a whole corrupt dataset (co-training vs annotation-driven ambient): the
    base config has no annotation, the classifier figures must still come from the trial's."""
    import copy
    import dataclasses

    from orchestrator.sweep.report import _annotation_figures
    from orchestrator.sweep.results import Results, TrialRow, aggregate, best_record, rank
    from orchestrator.sweep.state import sweeps_of_spec

    info = sweeps_of_spec(swept["storage"], str(swept["spec"]))[0]
    base = copy.deepcopy(info.base)
    with_ann = copy.deepcopy(base["data"]["corrupt"][0])
    base["data"]["corrupt"][0].pop("annotation")
    plain = copy.deepcopy(base["data"]["corrupt"][0])
    path = "data.corrupt.0"
    info = dataclasses.replace(
        info, base=base, paths=[path], labels={path: "corrupt.0"}, seeds=[0]
    )
    rows = [
        TrialRow(
            f"r{i}",
            f"r{i}",
            f"r{i}",
            "FINISHED",
            "finished",
            {path: ref},
            0,
            1,
            True,
            {METRIC: float(i)},
            1.0,
        )  # fmt: skip
        for i, ref in enumerate([plain, with_ann])
    ]
    ranking = rank(info, aggregate(info, rows))
    res = Results(info, rows, aggregate(info, rows), ranking, best_record(info, ranking), {})
    notes: list[str] = []
    figs = _annotation_figures(res, tmp_path, notes)
    assert {f.file.name for f in figs} == {
        "classifier_p_clean_vs_sigma.png",
        "sigma_min_distribution.png",
    }, notes


def test_importance_at_scale_uses_fewer_trees_and_ranks_the_true_effects() -> None:
    """fANOVA's cost grows with trees x trials: a thousand-trial report must not spend its
    seconds there, and the fewer trees must still rank the parameters by their real effect."""
    import random

    from orchestrator.sweep.stats import FANOVA_FULL_TRIALS, _fanova_trees, param_importance

    assert _fanova_trees(20) == _fanova_trees(FANOVA_FULL_TRIALS) == 64
    assert _fanova_trees(1000) == 16 and _fanova_trees(100_000) == 8
    rng = random.Random(0)
    trials = []
    for _ in range(400):
        p = {"a": rng.choice([0.02, 0.07, 0.18, 0.46]), "c": rng.choice([1, 2, 3, 4, 5])}
        p["noise"] = rng.uniform(0.0, 1.0)
        value = 0.5 * p["a"] + 0.2 * math.log(p["c"]) + rng.gauss(0.0, 0.02)
        trials.append((p, value))
    imp = param_importance(trials, {"a": "a", "c": "c", "noise": "noise"}, {}, "max")
    assert list(imp.values) == ["c", "a", "noise"]
    assert imp.values["noise"] < 0.05


def test_many_groups_keep_a_short_legend_with_the_best_in_colour(tmp_path: Path) -> None:
    """Sweeping sigma_min against 40 (tau, pool) combinations: the 7 groups holding the best
    configurations get a colour and a legend entry, the other 33 are grey under one entry."""
    import numpy as np

    from ambient_platform.config.naming import short_keys
    from orchestrator.sweep import figures
    from orchestrator.sweep.results import Results, TrialRow, aggregate, best_record, rank
    from orchestrator.sweep.state import SweepInfo

    paths = ["data.corrupt.0.sigma_min", "mixing.tau", "mixing.pool"]
    info = SweepInfo(
        "many", "p", "sqlite://", "e", "s.yaml", "", 0.0, metric="success_rate", mode="max",
        paths=paths, labels=short_keys(paths), seeds=[0, 1],
    )  # fmt: skip
    rng = np.random.default_rng(0)
    rows = []
    for tau in np.round(np.linspace(0.1, 0.9, 20), 2):
        for pool in ["proportional", "soft"]:
            for sm in [0.0251, 0.0737, 0.1824, 0.4616]:
                for seed in info.seeds:
                    value = float(tau) - abs(np.log(sm / 0.07)) * 0.1 + rng.normal(0, 0.01)
                    params = {paths[0]: sm, paths[1]: float(tau), paths[2]: pool}
                    rid = f"r{len(rows)}"
                    m = {"success_rate": value}
                    rows.append(TrialRow(rid, rid, rid, "FINISHED", "finished", params, seed, 1,
                                         True, m, 1.0))  # fmt: skip
    configs = aggregate(info, rows)
    ranking = rank(info, configs)
    res = Results(info, rows, configs, ranking, best_record(info, ranking), {})
    out = figures.metric_vs_param(res, paths[0], tmp_path / "sm.png")
    assert out.stat().st_size > 0
    shown, rest = figures._best_groups(figures._groups(res, paths[0]), "max")
    assert len(shown) == figures.MAX_GROUPS - 1 and len(rest) == 40 - len(shown)
    taus = sorted({float(k.split("tau=")[1].split(",")[0]) for k in shown})
    assert taus == [0.77, 0.82, 0.86, 0.9]  # 2 pools each, the best 7 of those 8
    shown_min, _ = figures._best_groups(figures._groups(res, paths[0]), "min")
    taus = sorted({float(k.split("tau=")[1].split(",")[0]) for k in shown_min})
    assert taus == [0.1, 0.14, 0.18, 0.23]
