"""Ring-shift send/recv probe between nodes, run by the agent as `python -m kedge.hooks.probe`.

For each shift k = 1..n-1, rank i sends `size_bytes` to rank (i+k) mod n while receiving from
(i-k) mod n; the median time of `repeats` exchanges is the delay i -> i+k. Rows are all-gathered so
every node prints the whole source x destination matrix (row-major JSON list on the last stdout line):
a hot row or column is a slow node or NIC, a hot cell a slow link.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import timedelta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kedge.hooks.probe")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--master-addr", required=True)
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--size-bytes", type=int, default=1 << 20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    n, me = args.world_size, args.rank
    dist.init_process_group(
        args.backend,
        init_method=f"tcp://{args.master_addr}:{args.master_port}",
        rank=me,
        world_size=n,
        timeout=timedelta(seconds=args.timeout_s),
    )
    try:
        send = torch.ones(max(1, args.size_bytes // 4))
        recv = torch.empty_like(send)
        row = torch.zeros(n, dtype=torch.float64)
        for k in range(1, n):
            samples = []
            for _ in range(max(1, args.repeats)):
                t0 = time.perf_counter()
                ops = [dist.P2POp(dist.isend, send, (me + k) % n), dist.P2POp(dist.irecv, recv, (me - k) % n)]
                for work in dist.batch_isend_irecv(ops):
                    work.wait()
                samples.append(time.perf_counter() - t0)
            row[(me + k) % n] = statistics.median(samples)
        rows = [torch.zeros(n, dtype=torch.float64) for _ in range(n)]
        dist.all_gather(rows, row)
    finally:
        dist.destroy_process_group()
    print(json.dumps([float(x) for r in rows for x in r]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
