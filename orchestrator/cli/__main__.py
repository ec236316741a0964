"""``python -m orchestrator.cli``: the entry point Ray job submissions run.

torch is loaded first, before the job joins Ray or does anything else. A job runs in the
unpacked copy of its ``working_dir``, which Ray's runtime-env agent deletes and unpacks again
under the same path whenever it sets the same package up once more (Ray 2.60
``WorkingDirPlugin.create`` passes ``overwrite=True``: a second node sharing the temp dir, a
restarted node, two jobs with the same code starting together). A process whose working
directory was deleted cannot load torch: oneMKL, linked into libtorch_cpu.so, calls getcwd()
while the library loads and exits with "Intel oneMKL FATAL ERROR: Cannot load
.../libtorch_cpu.so". Once torch is loaded, a later deletion is harmless. If the directory is
already gone, the fresh copy is entered by its path ($PWD).
"""

import os
import sys

try:
    os.getcwd()
except FileNotFoundError:
    fresh = os.environ.get("PWD", "")
    if not (fresh and os.path.isdir(fresh)):
        print("error: this job's working directory was deleted; submit it again", file=sys.stderr)
        sys.exit(2)
    os.chdir(fresh)

import torch  # noqa: E402, F401  (see above)

from orchestrator.cli import main  # noqa: E402

main()
