"""Codecs round-trip and are specified byte for byte; the manifest validates its input."""

from __future__ import annotations

import json
import struct

import pytest
import zstandard
from kedge.ckpt import codec
from kedge.ckpt.errors import FormatError
from kedge.ckpt.manifest import FORMAT_VERSION, ChunkRecord, Manifest, TensorRecord

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("name", codec.CODECS)
@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_round_trip(name: str, itemsize: int) -> None:
    raw = bytes(range(256)) * 4 * itemsize
    enc = codec.encode(raw, name, itemsize)
    assert codec.decode(bytes(enc), name, itemsize, len(raw)) == raw


def test_byte_grouping_is_the_documented_layout() -> None:
    raw = struct.pack("<2H", 0x0102, 0x0304)  # bytes 02 01 04 03
    assert codec.byte_group(raw, 2) == bytes([0x02, 0x04, 0x01, 0x03])
    frame = codec.encode(raw, "bgzstd", 2)
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes([0x02, 0x04, 0x01, 0x03])


def test_crc32c_known_value() -> None:
    assert codec.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_bad_frame_is_format_error() -> None:
    with pytest.raises(FormatError):
        codec.decode(b"not zstd", "zstd", 1, 8)


def _manifest() -> Manifest:
    chunk = ChunkRecord((0,), (2,), "data-00000.bin", 0, 8, "raw", 1, 8)
    return Manifest(FORMAT_VERSION, 3, 1, {"w": TensorRecord("w", "float32", (2,), [chunk])}, {"v": 1}, 1.5)


def test_manifest_json_round_trip() -> None:
    m = _manifest()
    back = Manifest.from_json(m.to_json())
    assert back.to_json() == m.to_json()
    assert back.tensors["w"].chunks[0] == m.tensors["w"].chunks[0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format_version=FORMAT_VERSION + 1), "newer"),
        (lambda d: d["tensors"]["w"].update(dtype="float99"), "unknown dtype"),
        (lambda d: d["tensors"]["w"]["chunks"][0].update(sizes=[3]), "outside"),
        (lambda d: d.pop("step"), "'step'"),
    ],
)
def test_manifest_rejects_bad_input(mutate: object, message: str) -> None:
    doc = json.loads(_manifest().to_json())
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(FormatError, match=message):
        Manifest.from_json(json.dumps(doc).encode())


def test_truncated_manifest_is_format_error() -> None:
    with pytest.raises(FormatError, match="truncated"):
        Manifest.from_json(_manifest().to_json()[:-10])
