"""Where a sweep trial runs, for its MLflow run and its torch device.

A child run records the node of its latest attempt (``node.id``, ``node.host``, ``node.ip``,
``node.accelerator``) so a slow or failing node shows up when runs are grouped by it in the
MLflow UI. An attempt after the first records why it runs (``retry_reason``): the driver writes
the cause Tune saw (an error, a lost node) together with ``retry_after_attempt``; when it did not
(the driver itself was killed and the sweep resumed), the trial works out what it can from the
previous attempt's node.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

NODE_ID_TAG = "node.id"
NODE_TAGS = (NODE_ID_TAG, "node.host", "node.ip", "node.accelerator")
RETRY_REASON_TAG = "retry_reason"
#: The attempt whose failure ``retry_reason`` explains (written with it by the driver).
RETRY_AFTER_TAG = "retry_after_attempt"
#: ``train.device`` values a GPU share from Ray turns into ``cuda``.
_FOLLOWS_GPU = ("cpu", "auto")


def assigned_gpus() -> list[str]:
    """The GPU ids Ray gave this worker (empty without a GPU share)."""
    import ray

    return [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def trial_device(configured: str, gpus: list[str]) -> str:
    """The trial's torch device: ``cuda`` when Ray assigned it a GPU (or a share of one) and
    the config says ``cpu`` or ``auto``. Ray limits the worker's ``CUDA_VISIBLE_DEVICES`` to
    that GPU, so ``cuda`` is the assigned one and several trials share it."""
    if gpus and configured in _FOLLOWS_GPU:
        return "cuda"
    return configured


def node_tags(gpus: list[str]) -> dict[str, str]:
    """This worker's node, as run tags."""
    import ray

    ctx = ray.get_runtime_context()
    return {
        NODE_ID_TAG: ctx.get_node_id(),
        "node.host": socket.gethostname(),
        "node.ip": ray.util.get_node_ip_address(),
        "node.accelerator": _accelerator(gpus, ctx.get_assigned_resources().get("GPU", 0.0)),
    }


def _accelerator(gpus: list[str], share: float) -> str:
    if not gpus:
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "GPU"
    return f"{name} (GPU {','.join(gpus)}, share {share:g})"


def retry_tags(previous: Mapping[str, str], attempt: int) -> dict[str, str]:
    """``retry_reason`` of attempt ``attempt`` (> 1), unless the driver already recorded it
    for the attempt before (``previous`` are the run's tags before this attempt)."""
    failed = str(attempt - 1)
    if previous.get(RETRY_AFTER_TAG) == failed and previous.get(RETRY_REASON_TAG):
        return {}
    reason = f"attempt {failed} did not finish (restarted when the sweep resumed)"
    node = previous.get(NODE_ID_TAG)
    if node and not _node_alive(node):  # a lost node, or a local Ray that ended with its driver
        reason = f"attempt {failed} did not finish and its node {node[:12]} is gone"
    return {RETRY_REASON_TAG: reason, RETRY_AFTER_TAG: failed}


def _node_alive(node_id: str) -> bool:
    import ray

    try:
        nodes: list[dict[str, Any]] = ray.nodes()
    except Exception as exc:  # the GCS is the driver's business; assume the node lives
        logger.debug("ray.nodes() failed: %s", exc)
        return True
    return any(n.get("NodeID") == node_id and n.get("Alive") for n in nodes)
