"""Prometheus /metrics for the agent: per-rank step time, collective latency, NVML gauges, verdicts."""

from __future__ import annotations

import logging
from typing import Any

from kedge.agent.model import CollectiveRecord, GpuHealth, RankStatus, StepTiming, Verdict
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class Metrics:
    """The agent's metrics in their own registry, served on `addr` (HOST:PORT; port 0 picks one)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.step = Gauge("kedge_rank_step", "Last step marked by the rank", ["rank"], registry=r)
        self.step_time = Gauge("kedge_rank_step_seconds", "Last step duration", ["rank"], registry=r)
        self.step_hist = Histogram(
            "kedge_step_duration_seconds", "Step durations", ["rank"], buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.collective = Histogram(
            "kedge_collective_latency_seconds",
            "Collective enqueue-to-complete time",
            ["group", "op"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.verdicts = Counter("kedge_verdicts", "Verdicts issued", ["kind"], registry=r)
        self.rss = Gauge("kedge_rank_rss_bytes", "Resident memory of the rank", ["rank"], registry=r)
        self.gpu = Gauge("kedge_gpu", "NVML readings", ["gpu", "field"], registry=r)
        self.port = 0
        self._server: Any = None

    def serve(self, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        self._server = server
        self.port = int(server.server_address[1])
        log.info("metrics_listening addr=%s:%d", host, self.port)

    def observe_steps(self, steps: list[StepTiming]) -> None:
        for s in steps:
            self.step_hist.labels(rank=str(s.rank)).observe(s.duration_s)

    def observe_collectives(self, records: list[CollectiveRecord]) -> None:
        for c in records:
            if c.complete_mono_ns > 0 and c.enqueue_mono_ns > 0:
                self.collective.labels(group=c.group, op=c.op).observe(
                    max(0.0, (c.complete_mono_ns - c.enqueue_mono_ns) / 1e9)
                )

    def observe_ranks(self, ranks: list[RankStatus]) -> None:
        for r in ranks:
            label = str(r.rank)
            self.step.labels(rank=label).set(r.step)
            self.step_time.labels(rank=label).set(r.step_time_s)
            self.rss.labels(rank=label).set(r.rss_bytes)

    def observe_gpus(self, gpus: list[GpuHealth]) -> None:
        for g in gpus:
            for name in (
                "temperature_c",
                "power_w",
                "throttle_reasons",
                "ecc_volatile_uncorrected",
                "row_remap_failures",
                "recovery_action",
                "sm_clock_mhz",
                "nvlink_down",
            ):
                self.gpu.labels(gpu=str(g.index), field=name).set(float(getattr(g, name)))

    def observe_verdict(self, verdict: Verdict) -> None:
        self.verdicts.labels(kind=verdict.kind.name).inc()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
