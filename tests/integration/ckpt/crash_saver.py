"""Child process for test_atomic_commit.py: writes one step through the commit protocol (torch-free,
so it starts fast) with whatever failpoint KEDGE_FAILPOINTS arms. argv: URL STEP STORAGE_OPTIONS_JSON."""

from __future__ import annotations

import json
import struct
import sys

from kedge.ckpt.storage import Storage
from kedge.ckpt.writer import RankWriter, commit_step


def main() -> None:
    url, step, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    storage = Storage(url, **options)
    writer = RankWriter(storage, step, 0, "zstd")
    data = struct.pack("<16f", *([float(step)] * 16))
    writer.add_chunk("x", "float32", (16,), (0,), (16,), memoryview(data))
    writer.finish({"meta": step})
    commit_step(storage, step, 1, timeout_s=30)


if __name__ == "__main__":
    main()
