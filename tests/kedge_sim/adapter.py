"""The boundary between the simulator and the coordinator under test.

The simulator speaks in its own terms (`cluster.NodeSample`); an adapter turns those into the
coordinator's own record types and calls the coordinator's code by function call, in place of the
gRPC transport (docs/SCALE.md says why). Everything behind an adapter is the real coordinator code;
the adapter holds no diagnosis or policy logic of its own.

    driver --register/heartbeat/report/tick/probe_result--> adapter --> kedge.coordinator (real)
           <--------------- decisions, probe requests ----------
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kedge_sim.cluster import NodeSample


@dataclass(kw_only=True, slots=True)
class Decision:
    """An action the coordinator took, in simulator terms (for scoring)."""

    at_s: float
    action: str  # none | alert | restart | shrink | replace | stop
    reason: str
    nodes: list[str] = field(default_factory=list)  # nodes the action isolates
    culprit_nodes: list[str] = field(default_factory=list)  # nodes named by the evidence
    culprit_ranks: list[int] = field(default_factory=list)  # ranks named by the evidence
    verdict_kinds: list[str] = field(default_factory=list)


@dataclass(kw_only=True, slots=True)
class ProbeRequest:
    """The coordinator asks these nodes to run the pairwise ring-shift probe."""

    request_id: str
    peers: list[str]


class CoordinatorAdapter(Protocol):
    """What the driver needs of a coordinator under test. Every call is timed as coordinator CPU."""

    name: str

    def register(self, now_s: float, node_ids: list[str], nproc: int) -> None:
        """Registers the job's nodes and starts the job (first incarnation)."""

    def heartbeat(self, now_s: float, node_id: str) -> None:
        """One lease renewal from one agent."""

    def report(self, now_s: float, sample: NodeSample) -> None:
        """One agent report (periodic summary or an urgent verdict)."""

    def tick(self, now_s: float) -> list[Decision]:
        """Runs the coordinator's periodic work (lease expiry, diagnosis, policy); new decisions."""

    def probe_requests(self) -> list[ProbeRequest]:
        """Probes the coordinator asked for since the last call."""

    def probe_result(self, now_s: float, node_id: str, request: ProbeRequest, delay_s: list[float]) -> None:
        """A node's answer to a probe: the row-major source x destination delay matrix."""
