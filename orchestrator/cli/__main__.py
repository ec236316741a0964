"""``python -m orchestrator.cli``: the entry point Ray job submissions run."""

from orchestrator.cli import main

main()
