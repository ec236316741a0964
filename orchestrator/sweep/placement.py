"""Where and how many trials run: a trial's resource request (CPU, GPU share, node labels),
the concurrency a sweep asks Tune for, and waiting for an elastic cluster to offer room.

On a cluster the driver joined (``--ray-address``) concurrency is ``max_concurrent`` as asked:
the pending trials' requests are what makes an autoscaler add workers, so a cap from the
resources present at start would run an elastic cluster one trial at a time. On a local node
the driver started, it is capped by what the node has (one torch thread per trial, never more
trials than CPUs: the 2-CPU deadlock of ENVIRONMENT.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ambient_core.errors import SweepError
from ambient_platform.config.sweep import ResourcesConfig, Sweep

logger = logging.getLogger(__name__)

#: Seconds a sweep on a joined cluster waits for a node that fits one trial (env override).
NODE_WAIT_ENV = "AMBIENT_NODE_WAIT_S"
NODE_WAIT_S = 900.0


def trial_resources(r: ResourcesConfig) -> Any:
    """What ``tune.with_resources`` gets: a plain request, or a one-bundle placement group
    when the trial is restricted to labelled nodes."""
    selector = r.label_selector()
    if not selector:
        return {"cpu": r.cpu, "gpu": r.gpu}
    from ray.tune import PlacementGroupFactory

    return PlacementGroupFactory([r.bundle()], bundle_label_selector=[selector])


def label_matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Whether a node's labels satisfy a Ray label selector (``v``, ``!v``, ``in(a,b)``,
    ``!in(a,b)``; a negated key may be absent)."""
    for key, want in selector.items():
        negate = want.startswith("!")
        want = want[1:] if negate else want
        values = set(want[3:-1].split(",")) if want.startswith("in(") else {want}
        if (labels.get(key) in values) == negate:
            return False
    return True


def fitting_nodes(ray: Any, r: ResourcesConfig) -> list[dict[str, Any]]:
    """Alive nodes that can hold one trial (its whole bundle, its labels)."""
    bundle, selector = r.bundle(), r.label_selector()
    return [
        n
        for n in ray.nodes()
        if n.get("Alive")
        and all(float(n.get("Resources", {}).get(k, 0.0)) >= v for k, v in bundle.items())
        and label_matches(n.get("Labels") or {}, selector)
    ]


def effective_concurrency(sweep: Sweep, ray: Any) -> int:
    """The number of trials run at once (see the module docstring)."""
    if os.environ.get("RAY_ADDRESS"):
        wait_for_capacity(sweep, ray)
        return sweep.spec.max_concurrent
    r = sweep.spec.resources
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
    if r.gpu > gpus:
        raise SweepError(
            f"resources.gpu = {r.gpu} but this machine's Ray has {gpus:g} GPUs: trials would "
            "wait forever (join a GPU cluster with --ray-address, or set resources.gpu=0)"
        )
    if r.cpu > cpus:
        raise SweepError(f"resources.cpu = {r.cpu} but this machine's Ray has {cpus:g} CPUs")
    if r.label_selector() and not fitting_nodes(ray, r):
        raise SweepError(
            f"no node of this machine's Ray has the labels {r.label_selector()} that "
            "resources.node_labels / resources.accelerator_type ask for: trials would wait "
            "forever (join a cluster with such nodes with --ray-address)"
        )
    cap = min(int(cpus), int(cpus // r.cpu))
    if r.gpu > 0:
        cap = min(cap, int(gpus // r.gpu))
    n = min(sweep.spec.max_concurrent, max(cap, 1))
    if n < sweep.spec.max_concurrent:
        logger.warning(
            "max_concurrent %d capped to %d by the cluster", sweep.spec.max_concurrent, n
        )
    return n


def wait_for_capacity(sweep: Sweep, ray: Any) -> None:
    """Ask the autoscaler for room for ``max_concurrent`` trials, then wait (bounded by
    ``AMBIENT_NODE_WAIT_S``, default 900 s) until some node can hold one trial: a cluster
    whose workers scale from zero has no CPU or GPU at submit time."""
    r = sweep.spec.resources
    selector = r.label_selector()
    from ray.autoscaler.sdk import request_resources

    n = sweep.spec.max_concurrent
    request_resources(
        bundles=[r.bundle()] * n, bundle_label_selectors=[selector] * n if selector else None
    )
    wanted = f"{r.bundle()}" + (f" with labels {selector}" if selector else "")
    deadline = time.monotonic() + float(os.environ.get(NODE_WAIT_ENV, NODE_WAIT_S))
    next_note = 0.0
    while not fitting_nodes(ray, r):
        now = time.monotonic()
        if now >= deadline:
            raise SweepError(
                f"the Ray cluster never offered a node with {wanted} for one trial; check "
                f"its worker groups and autoscaler, or raise {NODE_WAIT_ENV}"
            )
        if now >= next_note:
            logger.info("waiting for the cluster to add a node with %s for a trial", wanted)
            next_note = now + 30.0
        time.sleep(2.0)
