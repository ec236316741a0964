"""infra/ stays honest without Kubernetes: every manifest parses, names only commands, modules
and config files that exist, keeps secrets out, and the image installs the README's way."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from orchestrator.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MANIFESTS = sorted(INFRA.rglob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _embedded(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Documents inside documents: a ConfigMap holding a RayJob, a runtimeEnvYAML."""
    out = []
    for s in _strings(doc):
        if "\n" in s and ":" in s:
            try:
                inner = [d for d in yaml.safe_load_all(s) if isinstance(d, dict)]
            except yaml.YAMLError:
                continue
            out += inner
    return out


def _commands_in(text: str) -> list[list[str]]:
    """``ambient ...`` command lines (continuations joined; YAML comments and entrypoints)."""
    text = re.sub(r"\\\n[ \t]*#?[ \t]*", " ", text)
    out = []
    for line in text.splitlines():
        s = line.strip().lstrip("#").strip()
        s = s.removeprefix("entrypoint:").strip().strip("\"'")
        m = re.match(r"(?:\S*/)?ambient\s+(.*)$", s)
        if m:
            out.append(shlex.split(m.group(1), comments=True))
    return out


def _ambient_commands() -> list[tuple[Path, list[str]]]:
    found = [(p, args) for p in MANIFESTS for args in _commands_in(p.read_text())]
    readme = INFRA / "README.md"
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S)
    found += [(readme, args) for block in blocks for args in _commands_in(block)]
    return found


def test_manifests_parse_and_cover_the_deployment() -> None:
    kinds = {}
    for path in MANIFESTS:
        docs = _docs(path)
        assert docs, f"{path} is empty"
        for d in docs:
            if "kind" in d:  # Kubernetes objects
                assert d.get("apiVersion") and d.get("metadata", {}).get("name"), path
                kinds.setdefault(d["kind"], []).append(path.name)
            for inner in _embedded(d):
                if "kind" in inner:
                    kinds.setdefault(inner["kind"], []).append(path.name + "#embedded")
    for kind in ("RayCluster", "RayJob", "RayCronJob", "CronJob", "Deployment", "Service"):
        assert kind in kinds, f"no {kind} manifest in infra/"


def test_aws_launcher_keeps_trials_off_the_head_and_has_spot_cpu_and_gpu_workers() -> None:
    (cfg,) = _docs(INFRA / "aws" / "cluster.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    gpu = [t for t in workers if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    cpu = [t for t in workers if t not in gpu]
    assert gpu and cpu
    for t in workers:
        assert t["min_workers"] == 0 and t["max_workers"] > 0  # autoscaling from zero
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    for t in types.values():
        assert "IamInstanceProfile" in t["node_config"]  # S3 via the instance profile
    assert cfg["docker"]["image"] and not cfg["setup_commands"]  # the image has the project


def test_kuberay_cluster_head_takes_no_trials_and_groups_autoscale() -> None:
    (rc,) = [d for d in _docs(INFRA / "k8s" / "raycluster.yaml") if d["kind"] == "RayCluster"]
    spec = rc["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    assert all(g["minReplicas"] == 0 for g in groups.values())


def test_cron_manifests_run_one_watch_pass_on_the_shipped_config() -> None:
    (cron,) = _docs(INFRA / "k8s" / "raycronjob-reannotate.yaml")
    from ambient_platform.config.watch import cron_expression

    cron_expression(cron["spec"]["schedule"])
    assert "--once" in cron["spec"]["jobTemplate"]["entrypoint"]
    legacy = _docs(INFRA / "k8s" / "cronjob-reannotate.yaml")
    (cm,) = [d for d in legacy if d["kind"] == "ConfigMap"]
    (job,) = _embedded(cm)
    assert (
        job["kind"] == "RayJob"
        and job["spec"]["entrypoint"] == cron["spec"]["jobTemplate"]["entrypoint"]
    )
    (cj,) = [d for d in legacy if d["kind"] == "CronJob"]
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    role = next(d for d in legacy if d["kind"] == "Role")
    assert pod["serviceAccountName"] == "ambient-rayjob-creator"
    assert "create" in role["rules"][0]["verbs"] and "rayjobs" in role["rules"][0]["resources"]


@pytest.mark.parametrize(
    ("path", "args"),
    _ambient_commands(),
    ids=lambda v: v.name if isinstance(v, Path) else " ".join(v)[:40],
)
def test_every_ambient_command_in_infra_exists_with_its_files(path: Path, args: list[str]) -> None:
    """Parse the command with the real CLI (no execution) and check the files it names."""
    group: click.Group = cli
    ctx = click.Context(cli)
    rest = list(args)
    cmd: click.Command = group
    if rest == ["--help"]:
        return None
    while isinstance(cmd, click.Group):
        name = next((a for a in rest if not a.startswith("-")), None)
        assert name is not None and name in cmd.commands, f"{path}: no command {args}"
        rest = rest[rest.index(name) + 1 :]
        cmd = cmd.commands[name]
    # Strict parsing: a misspelled or removed flag, or a missing required one, fails here.
    rest = [re.sub(r"<[^>]*>", "x", a) for a in rest]
    try:
        sub = cmd.make_context(cmd.name, rest, parent=ctx)
    except click.UsageError as exc:
        pytest.fail(f"{path}: `ambient {' '.join(args)}`: {exc.format_message()}")
    if cmd.name == "submit":
        inner = list(sub.params["command"])
        assert inner, f"{path}: submit without a command"
        return test_every_ambient_command_in_infra_exists_with_its_files(path, inner)
    for key in ("config_path", "spec"):
        value = sub.params.get(key)
        if value:
            assert (ROOT / value).is_file(), f"{path}: {' '.join(args)} names missing {value}"
    return None


def test_manifest_config_files_and_modules_exist() -> None:
    for path in MANIFESTS:
        for s in _strings(_docs(path)):
            for ref in re.findall(r"sweeps/[\w./-]+\.yaml", s):
                assert (ROOT / ref).is_file(), f"{path} names missing {ref}"
            for mod in re.findall(r"python -m ([\w.]+)", s):
                assert (ROOT / (mod.replace(".", "/") + ".py")).is_file(), f"{path}: {mod}"


def test_no_secrets_in_infra() -> None:
    for path in INFRA.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
        assert not re.search(r"(?i)aws_secret_access_key\s*[:=]", text), path
        for m in re.finditer(r"postgres(?:ql)?(?:\+\w+)?://([^@\s]+)@", text):
            assert "$(" in m.group(1), f"{path}: a literal database password"
    mlflow = _docs(INFRA / "k8s" / "mlflow.yaml")
    pg = next(d for d in mlflow if d["kind"] == "StatefulSet")
    env = {e["name"]: e for e in pg["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "secretKeyRef" in env["POSTGRES_PASSWORD"]["valueFrom"]


def test_mlflow_server_postgres_s3_proxied_and_allowed_hosts() -> None:
    docs = _docs(INFRA / "k8s" / "mlflow.yaml")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]

    def arg(flag: str) -> str:
        return str(args[args.index(flag) + 1])

    env = {e["name"]: e for e in c["env"]}
    assert "--backend-store-uri" not in args  # the URI holds the password: env, not argv
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql")
    assert "secretKeyRef" in env["MLFLOW_DB_PASSWORD"]["valueFrom"]
    assert arg("--artifacts-destination").startswith("s3://")
    assert arg("--default-artifact-root") == "mlflow-artifacts:/" and "--serve-artifacts" in args
    hosts = arg("--allowed-hosts").split(",")
    port = svc["spec"]["ports"][0]["port"]
    name = svc["metadata"]["name"]
    for h in (name, f"{name}:{port}", f"{name}.ambient.svc.cluster.local:{port}"):
        assert h in hosts, f"--allowed-hosts lacks {h}"
    probe_host = c["readinessProbe"]["httpGet"]["httpHeaders"][0]["value"]
    assert probe_host in hosts  # the kubelet's probes would get 403 otherwise
    # Clients in the cluster use a Service DNS name the server allows.
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        for s in _strings(_docs(path)):
            for uri in re.findall(r"http://(mlflow[\w.-]*:\d+)", s):
                assert uri in hosts, f"{path} talks to {uri}, which --allowed-hosts rejects"


def test_image_installs_the_readme_way() -> None:
    docker = (INFRA / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    runs = [
        line.split("RUN", 1)[1].strip() for line in docker.splitlines() if line.startswith("RUN")
    ]
    install = "make setup"
    assert install in runs, "the image must install with the README's command"
    assert f"`{install}`" in readme
    assert re.search(r"^setup:", (ROOT / "Makefile").read_text(), flags=re.M)
    for src in re.findall(r"^COPY (.+) \S+$", docker, flags=re.M):
        for name in src.split():
            assert (ROOT / name.rstrip("/")).exists(), f"Dockerfile copies missing {name}"
    for needed in ("requirements.lock", "constraints.txt", "scripts/"):
        assert needed in docker
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv/" in ignore and ".ambient/" in ignore
