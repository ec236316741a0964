"""Start or join Ray the same way everywhere: local single node on loopback, or a cluster."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ambient_platform.settings import ambient_home, configure_environment

MAX_TMP_LEN = 40


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """``ray.init`` once per process: join ``address`` (or RAY_ADDRESS) or start a local node.

    Local nodes keep every server on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), no token
    auth, no usage stats, and write their session files under AMBIENT_HOME/ray.
    """
    configure_environment()
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        tmp = os.environ.get("RAY_TMPDIR") or str(ambient_home() / "ray")
        if len(tmp) > MAX_TMP_LEN:
            # Ray's unix sockets live ~60 characters below this and AF_UNIX paths stop at 107.
            tmp = os.path.join(tempfile.gettempdir(), f"ambient-ray-{os.getuid()}")
        os.makedirs(tmp, exist_ok=True)
        ray.init(num_cpus=num_cpus, _temp_dir=tmp, **kwargs)
    return ray
