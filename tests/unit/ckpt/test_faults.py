"""Failpoints: no-ops unless armed; raise/sleep in-process; the env spec is validated."""

from __future__ import annotations

import time

import pytest
from kedge.ckpt import faults

pytestmark = pytest.mark.timeout(30)


def test_unarmed_is_noop_and_armed_raises() -> None:
    faults.maybe("test.point")
    faults.arm("test.point", "raise")
    try:
        with pytest.raises(faults.InjectedFault, match=r"test\.point"):
            faults.maybe("test.point")
    finally:
        faults.disarm("test.point")
    faults.maybe("test.point")


def test_sleep_action() -> None:
    faults.arm("test.sleep", "sleep:0.05")
    try:
        start = time.monotonic()
        faults.maybe("test.sleep")
        assert time.monotonic() - start >= 0.05
    finally:
        faults.disarm("test.sleep")


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown failpoint action"):
        faults.arm("x", "explode")
    with pytest.raises(ValueError, match="want name=action"):
        faults._parse("justname")
    assert faults._parse("a=kill, b=sleep:1") == {"a": "kill", "b": "sleep:1"}
