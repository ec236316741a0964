"""What a resumed sweep must share with the one that started (``spec_digest``)."""

from __future__ import annotations

import copy
import dataclasses

from ambient_platform.config.sweep import load_sweep
from orchestrator.demo import SPEC
from orchestrator.sweep.state import spec_digest


def test_an_unset_optional_field_added_later_keeps_the_digest() -> None:
    """A schema field added by an upgrade (default None) must not block `sweep resume`."""
    sweep = load_sweep(SPEC)
    base = copy.deepcopy(sweep.base)
    base["data"]["clean"][0]["some_new_field"] = None
    assert spec_digest(dataclasses.replace(sweep, base=base)) == spec_digest(sweep)


def test_a_changed_base_value_changes_the_digest() -> None:
    sweep = load_sweep(SPEC)
    base = copy.deepcopy(sweep.base)
    base["train"]["steps"] += 1
    assert spec_digest(dataclasses.replace(sweep, base=base)) != spec_digest(sweep)
