"""A crafted checkpoint cannot attack its reader: Manifest.from_json and open_manifest refuse
manifests that would read outside a file, allocate without bound or escape the step directory, and
the parser turns any bytes into a Manifest or a FormatError. KEDGE_FUZZ_EXAMPLES raises the count."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kedge.ckpt import api
from kedge.ckpt.errors import FormatError
from kedge.ckpt.manifest import Manifest
from kedge.ckpt.reader import open_manifest
from kedge.ckpt.storage import MANIFEST_NAME, Storage, step_dir
from kedge.ckpt.validate import UnsafeManifest

FUZZ_EXAMPLES = int(os.environ.get("KEDGE_FUZZ_EXAMPLES", "200"))
pytestmark = pytest.mark.timeout(max(60, FUZZ_EXAMPLES // 10))
_FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Storage, dict[str, Any]]:
    api.save(
        str(tmp_path / "ck"), {"w": torch.arange(24.0).reshape(4, 6), "n": torch.ones(3, dtype=torch.int64)}
    )
    storage = Storage(str(tmp_path / "ck"))
    doc = json.loads(storage.read_bytes(f"{step_dir(0)}/{MANIFEST_NAME}"))
    return storage, doc


def _rewrite(storage: Storage, doc: dict[str, Any]) -> None:
    Path(storage.path(f"{step_dir(0)}/{MANIFEST_NAME}")).write_text(json.dumps(doc))


def _chunk(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["tensors"]["w"]["chunks"][0]  # type: ignore[no-any-return]


def test_untouched_checkpoint_opens(saved: tuple[Storage, dict[str, Any]]) -> None:
    assert set(open_manifest(saved[0], 0).tensors) == {"w", "n"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("byte_offset", 1 << 40, "outside file"),
        ("file", "../../../etc/passwd", "not a plain relative path"),
        ("file", "/etc/passwd", "not a plain relative path"),
        ("raw_length", 1 << 50, r"raw_length|exceeds"),
        ("sizes", [4, 7], "outside shape"),
        ("offsets", [-1, 0], "outside shape"),
        ("codec", "pickle", "unknown codec"),
    ],
)
def test_tampered_chunk_is_refused_before_any_read(
    saved: tuple[Storage, dict[str, Any]], field: str, value: object, message: str
) -> None:
    storage, doc = saved
    _chunk(doc)[field] = value
    _rewrite(storage, doc)
    with pytest.raises(FormatError, match=message):
        open_manifest(storage, 0)


def test_huge_shape_is_refused(saved: tuple[Storage, dict[str, Any]]) -> None:
    storage, doc = saved
    doc["tensors"]["w"]["shape"] = [1 << 40, 1 << 40]
    _rewrite(storage, doc)
    with pytest.raises(UnsafeManifest, match="exceeds"):
        open_manifest(storage, 0)


def test_oversized_manifest_is_refused_from_its_size(
    saved: tuple[Storage, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, _ = saved
    monkeypatch.setattr(Storage, "size", lambda self, relpath: 1 << 40)
    with pytest.raises(UnsafeManifest, match="manifest of 1099511627776 bytes"):
        open_manifest(storage, 0)


def test_regression_deeply_nested_json_is_a_format_error() -> None:
    # Found by review, not by the fuzzers: json.loads raises RecursionError (not ValueError) on deep nesting.
    with pytest.raises(FormatError, match="nested too deeply"):
        Manifest.from_json(b"[" * 200_000)
    with pytest.raises(FormatError, match="nested too deeply"):
        Manifest.from_json(b'{"values": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}")


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # a named function: hypothesis's check of a lambda's source misreads this one and warns
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    _containers,
    max_leaves=20,
)


@_FUZZ
@given(st.binary(max_size=400))
def test_fuzz_parser_on_bytes(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        Manifest.from_json(data)


@_FUZZ
@given(st.data())
def test_fuzz_parser_on_mutated_real_manifests(data: st.DataObject) -> None:
    doc: dict[str, Any] = {
        "format_version": 1,
        "step": 0,
        "world_size": 1,
        "created_unix_s": 0.0,
        "values": {},
        "extra": {},
        "tensors": {
            "w": {
                "dtype": "float32",
                "shape": [4, 6],
                "chunks": [
                    {"offsets": [0, 0], "sizes": [4, 6], "file": "data-00000.bin", "byte_offset": 0,
                     "byte_length": 96, "codec": "raw", "crc32c": 0, "raw_length": 96}
                ],
            }
        },
    }  # fmt: skip
    targets = [doc, doc["tensors"]["w"], doc["tensors"]["w"]["chunks"][0]]
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(targets))
        key = data.draw(st.sampled_from(sorted(target)))
        target[key] = data.draw(_json)
    try:
        m = Manifest.from_json(json.dumps(doc).encode())
    except FormatError:
        return
    for t in m.tensors.values():
        for c in t.chunks:
            assert all(o >= 0 and o + s <= n for o, s, n in zip(c.offsets, c.sizes, t.shape, strict=True))
