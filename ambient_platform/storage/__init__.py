"""Storage: one API for local directories and ``s3://`` prefixes, with atomic writes and leases.

Modules, one concept each: ``keys`` (name, key and URI rules), ``backend`` (the contract both
backends meet), ``local`` (filesystem: temp file + fsync + rename/link, flocks), ``s3`` (boto3
and pyarrow handles, botocore error translation, conditional PUTs), ``leases`` (lease files and
the renewing ``LeaseKeeper``) and ``root`` (``StorageRoot``, which ties them together).
Import from here; the submodules are implementation.
"""

from __future__ import annotations

from ambient_core.errors import StorageError
from ambient_platform.storage.backend import FileInfo
from ambient_platform.storage.keys import validate_name
from ambient_platform.storage.leases import Lease, LeaseKeeper, LeaseLost
from ambient_platform.storage.root import StorageRoot
from ambient_platform.storage.s3 import ENDPOINT_ENV_VARS, s3_endpoint_from_env

__all__ = [
    "ENDPOINT_ENV_VARS",
    "FileInfo",
    "Lease",
    "LeaseKeeper",
    "LeaseLost",
    "StorageError",
    "StorageRoot",
    "s3_endpoint_from_env",
    "validate_name",
]
