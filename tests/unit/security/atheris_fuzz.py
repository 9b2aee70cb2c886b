"""Coverage-guided fuzzing with atheris (optional; `pip install atheris`, not a kedge dependency).

    .venv/bin/python tests/unit/security/atheris_fuzz.py manifest -atheris_runs=200000
    .venv/bin/python tests/unit/security/atheris_fuzz.py page -max_total_time=120

Targets: `manifest` (Manifest.from_json: bytes -> Manifest or FormatError) and `page` (the agent's
progress-page reader: bytes -> PageSnapshot or PageFormatError). Any other exception is a crash:
atheris stops and writes the input to crash-<hash>; turn it into a regression test."""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from kedge.agent.progress_reader import MAGIC, PAGE_SIZE_BYTES, VERSION, PageFormatError, parse_page
    from kedge.ckpt.errors import FormatError
    from kedge.ckpt.manifest import Manifest


def manifest(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        Manifest.from_json(data)


def page(data: bytes) -> None:
    # Odd first byte: the raw input. Even: a valid magic and version in front, padded to a page, so
    # the fuzzer reaches the fields behind the header checks.
    if data[:1] and data[0] % 2 == 0:
        data = (MAGIC + VERSION.to_bytes(4, "little") + data[1:]).ljust(PAGE_SIZE_BYTES, b"\0")
    with contextlib.suppress(PageFormatError):
        parse_page(data)


TARGETS = {"manifest": manifest, "page": page}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
