"""kedge.ckpt.validate refuses every manifest field a reader must not trust, before any read."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kedge.ckpt import validate as v

FUZZ_EXAMPLES = int(os.environ.get("KEDGE_FUZZ_EXAMPLES", "200"))
pytestmark = pytest.mark.timeout(max(60, FUZZ_EXAMPLES // 10))


@dataclass(frozen=True)
class Chunk:
    offsets: tuple[int, ...] = (0, 0)
    sizes: tuple[int, ...] = (2, 3)
    file: str = "data-00000.bin"
    byte_offset: int = 0
    byte_length: int = 24
    codec: str = "raw"
    crc32c: int = 0
    raw_length: int = 24


@dataclass
class Tensor:
    dtype: str = "float32"
    shape: tuple[int, ...] = (2, 3)
    chunks: list[Chunk] = field(default_factory=lambda: [Chunk()])


@dataclass
class Manifest:
    tensors: dict[str, Tensor] = field(default_factory=lambda: {"w": Tensor()})


def test_a_sound_manifest_passes() -> None:
    m = Manifest(
        {
            "model.w": Tensor(),
            "scalar": Tensor(
                dtype="int64", shape=(), chunks=[Chunk(offsets=(), sizes=(), byte_length=8, raw_length=8)]
            ),
            "z": Tensor(chunks=[Chunk(codec="zstd", byte_length=9, file="sub/data-1.bin")]),
        }
    )
    v.validate_manifest(m)
    v.validate_file_ranges(m, lambda f: 1024)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (Tensor(dtype="object"), "unknown dtype"),
        (Tensor(shape=(2, -3)), "negative dimension"),
        (Tensor(shape=(1 << 40, 1 << 40)), "exceeds"),
        (Tensor(shape=(1,) * 40, chunks=[]), "dimensions"),
        (Tensor(chunks=[Chunk(offsets=(0,), sizes=(6,))]), "box rank"),
        (Tensor(chunks=[Chunk(offsets=(1, 0))]), "outside shape"),
        (Tensor(chunks=[Chunk(offsets=(-1, 0))]), "outside shape"),
        (Tensor(chunks=[Chunk(sizes=(2, -3))]), "outside shape"),
        (Tensor(chunks=[Chunk(raw_length=4096, byte_length=4096)]), "raw_length 4096"),
        (Tensor(chunks=[Chunk(byte_length=10)]), "raw codec"),
        (Tensor(chunks=[Chunk(byte_offset=-5)]), "byte_offset must be a non-negative"),
        (Tensor(chunks=[Chunk(byte_length=True)]), "byte_length must be"),  # type: ignore[arg-type]
        (Tensor(chunks=[Chunk(codec="pickle")]), "unknown codec"),
        (Tensor(chunks=[Chunk(codec="zstd", byte_length=1 << 40)]), "chunk limit"),
        (Tensor(chunks=[Chunk(offsets=(0.5, 0))]), "must be integers"),  # type: ignore[arg-type]
    ],
)
def test_bad_tensor_fields_are_refused(tensor: Tensor, message: str) -> None:
    with pytest.raises(v.UnsafeManifest, match=message):
        v.validate_manifest(Manifest({"w": tensor}))


@pytest.mark.parametrize(
    "file",
    ["", "../secret", "a/../../b", "/etc/passwd", "..", ".", "a//b", "a\\..\\b", ".hidden", "a/b/", "x\x00y",
     "a/" * 9 + "b", "f" * 2000, "data bin", "C:data"],
)  # fmt: skip
def test_chunk_files_must_be_plain_relative_paths(file: str) -> None:
    with pytest.raises(v.UnsafeManifest, match="file name"):
        v.validate_manifest(Manifest({"w": Tensor(chunks=[Chunk(file=file)])}))


@pytest.mark.parametrize("name", ["", "a\nb", "a\x00b", "x" * 5000])
def test_tensor_names_are_bounded_printable_text(name: str) -> None:
    with pytest.raises(v.UnsafeManifest, match="name"):
        v.validate_manifest(Manifest({name: Tensor()}))


def test_totals_are_bounded() -> None:
    limits = v.Limits(max_tensors=2, max_chunks=3)
    with pytest.raises(v.UnsafeManifest, match="3 tensors"):
        v.validate_manifest(Manifest({str(i): Tensor() for i in range(3)}), limits)
    with pytest.raises(v.UnsafeManifest, match="more than 3 chunks"):
        v.validate_manifest(
            Manifest({"a": Tensor(chunks=[Chunk()] * 2), "b": Tensor(chunks=[Chunk()] * 2)}), limits
        )


def test_byte_ranges_must_lie_inside_their_files() -> None:
    calls: list[str] = []

    def size(name: str) -> int:
        calls.append(name)
        return 30

    inside = Manifest({"a": Tensor(), "b": Tensor(chunks=[Chunk(byte_offset=6)])})
    v.validate_file_ranges(inside, size)
    assert calls == ["data-00000.bin"]  # one size lookup per distinct file
    outside = Manifest({"a": Tensor(chunks=[Chunk(byte_offset=7)])})
    with pytest.raises(v.UnsafeManifest, match=r"bytes 7\.\.31 outside file 'data-00000.bin' of 30 bytes"):
        v.validate_file_ranges(outside, lambda f: 30)


# -- fuzzing: any field values either validate or raise UnsafeManifest, and what validates is sound --
_ints = st.one_of(st.integers(-3, 40), st.integers(-(1 << 70), 1 << 70))
_chunks = st.builds(
    Chunk,
    offsets=st.lists(_ints, max_size=4).map(tuple),
    sizes=st.lists(_ints, max_size=4).map(tuple),
    file=st.one_of(st.just("data-00000.bin"), st.text(max_size=30)),
    byte_offset=_ints,
    byte_length=_ints,
    codec=st.sampled_from(["raw", "zstd", "bgzstd", "lz4", ""]),
    raw_length=_ints,
)
_tensors = st.builds(
    Tensor,
    dtype=st.sampled_from([*v.ITEMSIZE_BYTES, "object", ""]),
    shape=st.lists(_ints, max_size=4).map(tuple),
    chunks=st.lists(_chunks, max_size=4),
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=20), _tensors, max_size=4), st.integers(0, 1 << 40))
def test_fuzz_validator_never_crashes_and_admits_only_sound_boxes(
    tensors: dict[str, Tensor], file_size: int
) -> None:
    m = Manifest(tensors)
    try:
        v.validate_manifest(m)
        v.validate_file_ranges(m, lambda f: file_size)
    except v.UnsafeManifest:
        return
    for t in m.tensors.values():
        itemsize = v.ITEMSIZE_BYTES[t.dtype]
        for c in t.chunks:
            assert all(
                o >= 0 and s >= 0 and o + s <= n for o, s, n in zip(c.offsets, c.sizes, t.shape, strict=True)
            )
            assert c.byte_offset >= 0 and c.byte_offset + c.byte_length <= file_size
            assert c.raw_length <= v.DEFAULT_LIMITS.max_chunk_bytes
            n = 1
            for s in c.sizes:
                n *= s
            assert c.raw_length == n * itemsize
            assert ".." not in c.file.split("/") and not c.file.startswith("/")


def test_limits_are_a_frozen_config() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.DEFAULT_LIMITS.max_tensors = 1  # type: ignore[misc]
