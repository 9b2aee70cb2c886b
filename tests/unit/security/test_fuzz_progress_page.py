"""Fuzzing the agent's progress-page reader: any bytes either parse or raise PageFormatError; a page
that parses has bounded groups. KEDGE_FUZZ_EXAMPLES raises the example count (docs/SECURITY.md)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kedge.agent import progress_reader as pr

FUZZ_EXAMPLES = int(os.environ.get("KEDGE_FUZZ_EXAMPLES", "200"))
pytestmark = pytest.mark.timeout(max(60, FUZZ_EXAMPLES // 10))
_FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(data: bytes) -> None:
    try:
        page = pr.parse_page(data)
    except pr.PageFormatError:
        return
    assert len(page.groups) <= pr.MAX_GROUPS
    assert all(isinstance(g.name, str) and len(g.name) <= 32 for g in page.groups)


@_FUZZ
@given(st.binary(max_size=2 * pr.PAGE_SIZE_BYTES))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check(data)


@_FUZZ
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=pr.PAGE_SIZE_BYTES, max_size=pr.PAGE_SIZE_BYTES),
    st.integers(0, pr.PAGE_SIZE_BYTES + 64),
)
def test_fuzz_pages_with_a_valid_magic(version: int, n_groups: int, body: bytes, length: int) -> None:
    # Random bytes almost never carry the magic: put it there so the deeper fields get fuzzed.
    head = pr.MAGIC + struct.pack("<II", version if version % 3 else pr.VERSION, n_groups)
    _check((head + body[len(head) :])[:length])


def test_read_page_of_a_file_of_garbage_is_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "page"
    path.write_bytes(b"\xff" * 10)
    assert pr.read_page(path) is None
