"""etcd backend of the coordinator store (`--store etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`).

For high availability: several coordinators share one etcd, one leads (`kedge.coordinator.leader`).

Key layout under the deployment prefix P (default `/kedge/default/`; the URL path overrides it, so
several deployments share one etcd without seeing each other):

    P/schema                           "1"  (a newer version is refused: SchemaMismatch)
    P/leader                           the leader's id and address, bound to its lease
    P/index/<job>                      "" : one key per job, for list_jobs
    P/jobs/<job>/j/{meta,incarnation,state,step,world_size,restarts}   the job's scalar fields
    P/jobs/<job>/nodes/<node>          NodeRecord as JSON (lease expiry kept apart, below)
    P/jobs/<job>/leases/<node>         lease expiry (wall ns): renew_leases is a blind write
    P/jobs/<job>/assign/<inc:012d>     that incarnation's assignments, one compact JSON list
    P/jobs/<job>/{diag,act}/<first:016d>-<count:06d>   one append batch; counters in .../j/{diag,act}_total

Fencing: every mutation is ONE etcd transaction whose compares are the job's incarnation key equal to
the caller's token and, when a leader election is attached (`attach_leadership`), the leader key's
create revision equal to this coordinator's term (`Leadership.fence()`). A deposed leader's late write
therefore fails inside etcd even if that leader still believes it leads. When the compares fail the
transaction reads the keys back to say why: NotFound, StaleIncarnation, or NotLeader.

Limits: one assignment key per incarnation must fit etcd's request limit (1.5 MiB by default, about
30k ranks with short node ids); renew_leases writes in transactions of at most _OPS_PER_TXN keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict

from kedge.coordinator.errors import (
    BadStoreUrl,
    NotFound,
    SchemaMismatch,
    StaleIncarnation,
    StoreError,
    StoreUnavailable,
)
from kedge.coordinator.etcd_client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnavailableError,
    Get,
    KeyValue,
    Op,
    Put,
    TxnResult,
    parse_endpoints,
)
from kedge.coordinator.leader import Leadership
from kedge.coordinator.model import (
    ActionRecord,
    Assignment,
    JobRecord,
    JobState,
    NodeRecord,
    NodeState,
    Verdict,
)
from kedge.coordinator.records_json import (
    action_from_json,
    action_to_json,
    verdict_from_json,
    verdict_to_json,
)
from kedge.coordinator.store import RETAINED_RECORDS

__all__ = ["DEFAULT_PREFIX", "SCHEMA_VERSION", "EtcdStore", "NotLeader", "open_etcd_store", "parse_store_url"]

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "/kedge/default/"
_OPS_PER_TXN = 100  # etcd's --max-txn-ops defaults to 128
_RMW_RETRIES = 16  # read-modify-write races only with this coordinator's own threads


class NotLeader(StoreError):
    """This coordinator is not (or no longer) the leader: its write was refused."""


class _ModRaced(StoreError):
    """Internal: a read-modify-write lost a race to another writer; the caller retries."""


LeadershipSource = Callable[[], Leadership | None]


def parse_store_url(url: str) -> tuple[list[str], str]:
    """`etcd://H:P[,H:P...][/PREFIX]` → (endpoints, key prefix ending in '/')."""
    body = url.removeprefix("etcd://")
    hosts, slash, path = body.partition("/")
    try:
        endpoints = parse_endpoints(hosts)
    except ValueError as error:
        raise BadStoreUrl(str(error)) from None
    prefix = "/" + path.strip("/") + "/" if slash and path.strip("/") else DEFAULT_PREFIX
    return endpoints, prefix


def open_etcd_store(url: str, *, timeout_s: float = 2.0) -> EtcdStore:
    endpoints, prefix = parse_store_url(url)
    return EtcdStore(EtcdClient(endpoints, timeout_s=timeout_s), prefix, own_client=True)


def _int(kv: KeyValue | None, default: int = 0) -> int:
    return int(kv.value) if kv is not None else default


class EtcdStore:
    """Store on etcd v3 (see the module docstring); thread-safe (etcd serializes the transactions)."""

    def __init__(self, client: EtcdClient, prefix: str = DEFAULT_PREFIX, *, own_client: bool = False) -> None:
        if not prefix.endswith("/"):
            raise ValueError(f"etcd key prefix must end with '/': {prefix!r}")
        self.client = client
        self.prefix = prefix
        self._own_client = own_client
        self._leadership: LeadershipSource | None = None
        self._closed = False
        self._check_schema()

    @property
    def leader_key(self) -> str:
        return self.prefix + "leader"

    def attach_leadership(self, source: LeadershipSource | None) -> None:
        """From now on every write also requires `source()` to be a term still current in etcd."""
        self._leadership = source

    # -- plumbing -------------------------------------------------------------------------------

    def _job(self, job_id: str, leaf: str = "") -> str:
        return f"{self.prefix}jobs/{job_id}/{leaf}"

    def _scalar(self, job_id: str, name: str) -> str:
        return self._job(job_id, "j/" + name)

    def _call(self, fn: Callable[[], TxnResult]) -> TxnResult:
        if self._closed:
            raise StoreError("etcd store is closed")
        try:
            return fn()
        except EtcdUnavailableError as error:
            raise StoreUnavailable(str(error)) from error
        except EtcdError as error:
            raise StoreError(str(error)) from error

    def _leader_fence(self) -> list[Compare]:
        if self._leadership is None:
            return []
        term = self._leadership()
        if term is None:
            raise NotLeader("this coordinator does not lead now: write refused")
        return [term.fence()]

    def _fenced(
        self,
        job_id: str,
        incarnation: int,
        success: Sequence[Op],
        extra: Sequence[Compare] = (),
    ) -> TxnResult:
        """One transaction guarded by the leader's term and the job's incarnation; raises why not."""
        inc_key = self._scalar(job_id, "incarnation")
        compares = [*self._leader_fence(), Compare(inc_key, "value", "==", str(incarnation).encode()), *extra]
        result = self._call(lambda: self.client.txn(compares, success, [Get(inc_key), Get(self.leader_key)]))
        if not result.succeeded:
            self._raise_why(job_id, incarnation, result)
        return result

    def _raise_why(self, job_id: str, incarnation: int, result: TxnResult) -> None:
        inc_kvs, leader_kvs = result.ranges
        if self._leadership is not None:
            term = self._leadership()
            if term is None or not leader_kvs or leader_kvs[0].create_revision != term.revision:
                raise NotLeader(f"write for job {job_id!r} refused: this coordinator was deposed")
        if not inc_kvs:
            raise NotFound(f"unknown job {job_id!r}")
        current = _int(inc_kvs[0])
        if current != incarnation:
            raise StaleIncarnation(job_id, incarnation, current)
        raise _ModRaced(f"job {job_id!r}: a concurrent write changed the key first")

    def _check_schema(self) -> None:
        key = self.prefix + "schema"
        result = self._call(
            lambda: self.client.txn(
                [Compare(key, "create", "==", 0)], [Put(key, str(SCHEMA_VERSION).encode())], [Get(key)]
            )
        )
        if not result.succeeded and _int(result.ranges[0][0]) > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"etcd prefix {self.prefix} has schema version {_int(result.ranges[0][0])}, "
                f"newer than this coordinator's {SCHEMA_VERSION}"
            )

    # -- jobs -----------------------------------------------------------------------------------

    def ensure_job(self, job_id: str, *, command: Sequence[str], now_wall_ns: int) -> JobRecord:
        meta = json.dumps({"command": list(command), "created_wall_ns": now_wall_ns}).encode()
        scalars = {
            "meta": meta,
            "incarnation": b"0",
            "state": JobState.PENDING.value.encode(),
            "step": b"-1",
            "world_size": b"0",
            "restarts": b"0",
        }
        puts = [Put(self._scalar(job_id, k), v) for k, v in scalars.items()]
        puts.append(Put(f"{self.prefix}index/{job_id}", b""))
        meta_key = self._scalar(job_id, "meta")
        compares = [*self._leader_fence(), Compare(meta_key, "create", "==", 0)]
        read = Get(self._job(job_id, "j/"), prefix=True)
        result = self._call(lambda: self.client.txn(compares, [*puts, read], [read, Get(self.leader_key)]))
        kvs = result.ranges[0]
        if not result.succeeded and not kvs:  # the job is absent: the leader compare failed
            raise NotLeader(f"ensure_job {job_id!r} refused: this coordinator was deposed")
        return self._job_from(job_id, kvs)

    def _job_from(self, job_id: str, kvs: list[KeyValue]) -> JobRecord:
        by_name = {kv.key.rsplit("/", 1)[1]: kv for kv in kvs}
        meta = json.loads(by_name["meta"].value)
        return JobRecord(
            job_id=job_id,
            state=JobState(by_name["state"].value.decode()),
            incarnation=_int(by_name["incarnation"]),
            world_size=_int(by_name["world_size"]),
            step=_int(by_name["step"]),
            restarts=_int(by_name["restarts"]),
            command=[str(c) for c in meta["command"]],
            created_wall_ns=int(meta["created_wall_ns"]),
        )

    def get_job(self, job_id: str) -> JobRecord | None:
        kvs = self._get_prefix(self._job(job_id, "j/"))
        return self._job_from(job_id, kvs) if any(kv.key.endswith("/meta") for kv in kvs) else None

    def _get_prefix(self, prefix: str) -> list[KeyValue]:
        return self._call(lambda: self.client.txn([], [Get(prefix, prefix=True)])).ranges[0]

    def list_jobs(self) -> list[JobRecord]:
        index = self.prefix + "index/"
        jobs = (self.get_job(kv.key.removeprefix(index)) for kv in self._get_prefix(index))
        return [job for job in jobs if job is not None]

    def set_job_state(self, job_id: str, state: JobState, *, incarnation: int) -> None:
        self._fenced(job_id, incarnation, [Put(self._scalar(job_id, "state"), state.value.encode())])

    def set_job_step(self, job_id: str, step: int, *, incarnation: int) -> None:
        self._fenced(job_id, incarnation, [Put(self._scalar(job_id, "step"), str(step).encode())])

    def begin_incarnation(
        self,
        job_id: str,
        *,
        expected_incarnation: int,
        assignments: Sequence[Assignment],
        state: JobState,
        count_restart: bool,
    ) -> int:
        _check_assignments(assignments)
        job = self.get_job(job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id!r}")
        if job.incarnation != expected_incarnation:
            raise StaleIncarnation(job_id, expected_incarnation, job.incarnation)
        new = expected_incarnation + 1
        ordered = sorted(assignments, key=lambda a: a.rank)
        world = json.dumps([[a.node_id, a.local_rank] for a in ordered], separators=(",", ":")).encode()
        # restarts changes only together with the incarnation, so the incarnation compare covers it.
        puts = [
            Put(self._scalar(job_id, "incarnation"), str(new).encode()),
            Put(self._scalar(job_id, "world_size"), str(len(ordered)).encode()),
            Put(self._scalar(job_id, "state"), state.value.encode()),
            Put(self._scalar(job_id, "restarts"), str(job.restarts + int(count_restart)).encode()),
            Put(self._job(job_id, f"assign/{new:012d}"), world),
        ]
        self._fenced(job_id, expected_incarnation, puts)
        return new

    # -- nodes ----------------------------------------------------------------------------------

    def _node_key(self, job_id: str, node_id: str) -> str:
        return self._job(job_id, "nodes/" + node_id)

    def upsert_node(self, node: NodeRecord, *, incarnation: int) -> None:
        body = asdict(node)
        expiry = body.pop("lease_expires_wall_ns")
        body["state"] = NodeState(node.state).value
        self._fenced(
            node.job_id,
            incarnation,
            [
                Put(self._node_key(node.job_id, node.node_id), json.dumps(body).encode()),
                Put(self._job(node.job_id, "leases/" + node.node_id), str(expiry).encode()),
            ],
        )

    def set_node_state(self, job_id: str, node_id: str, state: NodeState, *, incarnation: int) -> None:
        key = self._node_key(job_id, node_id)
        for _ in range(_RMW_RETRIES):
            kv = self._call(lambda: self.client.txn([], [Get(key)])).ranges[0]
            if not kv:
                self._fenced(job_id, incarnation, [])  # a stale token or unknown job says so first
                raise NotFound(f"unknown node {node_id!r} in job {job_id!r}")
            body = json.loads(kv[0].value)
            body["state"] = state.value
            try:
                self._fenced(
                    job_id,
                    incarnation,
                    [Put(key, json.dumps(body).encode())],
                    [Compare(key, "mod", "==", kv[0].mod_revision)],
                )
                return
            except _ModRaced:
                continue
        raise StoreError(f"set_node_state {job_id}/{node_id}: too many concurrent updates")

    def renew_leases(self, job_id: str, expiries_wall_ns: Mapping[str, int], *, incarnation: int) -> None:
        known = {kv.key.rsplit("/", 1)[1] for kv in self._get_prefix(self._job(job_id, "nodes/"))}
        puts = [
            Put(self._job(job_id, "leases/" + node_id), str(expiry).encode())
            for node_id, expiry in sorted(expiries_wall_ns.items())
            if node_id in known
        ]
        self._fenced(job_id, incarnation, puts[:_OPS_PER_TXN])
        for start in range(_OPS_PER_TXN, len(puts), _OPS_PER_TXN):
            self._fenced(job_id, incarnation, puts[start : start + _OPS_PER_TXN])

    def list_nodes(self, job_id: str) -> list[NodeRecord]:
        result = self._call(
            lambda: self.client.txn(
                [],
                [
                    Get(self._job(job_id, "nodes/"), prefix=True),
                    Get(self._job(job_id, "leases/"), prefix=True),
                ],
            )
        )
        node_kvs, lease_kvs = result.ranges
        expiries = {kv.key.rsplit("/", 1)[1]: _int(kv) for kv in lease_kvs}
        nodes = []
        for kv in node_kvs:
            body = json.loads(kv.value)
            body["state"] = NodeState(body["state"])
            nodes.append(NodeRecord(**body, lease_expires_wall_ns=expiries.get(body["node_id"], 0)))
        return sorted(nodes, key=lambda n: n.node_id)

    # -- ranks ----------------------------------------------------------------------------------

    def assignments(self, job_id: str, incarnation: int) -> list[Assignment]:
        kvs = self._call(lambda: self.client.txn([], [Get(self._job(job_id, f"assign/{incarnation:012d}"))]))
        if not kvs.ranges[0]:
            return []
        pairs = json.loads(kvs.ranges[0][0].value)
        return [Assignment(rank=r, node_id=str(n), local_rank=int(lr)) for r, (n, lr) in enumerate(pairs)]

    # -- diagnoses and actions --------------------------------------------------------------------

    def append_diagnoses(self, job_id: str, verdicts: Sequence[Verdict], *, incarnation: int) -> None:
        self._append(job_id, "diag", [verdict_to_json(v) for v in verdicts], incarnation)

    def append_action(self, job_id: str, action: ActionRecord, *, incarnation: int) -> None:
        self._append(job_id, "act", [action_to_json(action)], incarnation)

    def recent_diagnoses(self, job_id: str, limit: int) -> list[Verdict]:
        return [verdict_from_json(d) for d in self._recent(job_id, "diag", limit)]

    def recent_actions(self, job_id: str, limit: int) -> list[ActionRecord]:
        return [action_from_json(d) for d in self._recent(job_id, "act", limit)]

    def _append(self, job_id: str, kind: str, records: list[dict[str, object]], incarnation: int) -> None:
        """Appends one batch key; prunes whole batches that fall out of the retained window."""
        records = records[-RETAINED_RECORDS:]
        total_key = self._scalar(job_id, kind + "_total")
        for _ in range(_RMW_RETRIES):
            total_kv = self._call(lambda: self.client.txn([], [Get(total_key)])).ranges[0]
            total = _int(total_kv[0]) if total_kv else 0
            new_total = total + len(records)
            batch_key = self._job(job_id, f"{kind}/{total:016d}-{len(records):06d}")
            ops: list[Op] = [
                Put(batch_key, json.dumps(records).encode()),
                Put(total_key, str(new_total).encode()),
            ]
            ops += self._prune_ops(job_id, kind, new_total - RETAINED_RECORDS)
            guard = Compare(total_key, "mod", "==", total_kv[0].mod_revision if total_kv else 0)
            try:
                self._fenced(job_id, incarnation, ops, [guard])
                return
            except _ModRaced:
                continue
        raise StoreError(f"append {kind} for job {job_id!r}: too many concurrent appends")

    def _prune_ops(self, job_id: str, kind: str, first_kept: int) -> list[Op]:
        """Deletes batches that end at or before record number `first_kept` (one range delete)."""
        if first_kept <= 0:
            return []
        batches = self._get_prefix(self._job(job_id, kind + "/"))
        doomed = [kv.key for kv in batches if _batch_end(kv.key) <= first_kept]
        return [Delete(key) for key in doomed[:_OPS_PER_TXN]]

    def _recent(self, job_id: str, kind: str, limit: int) -> list[dict[str, object]]:
        """Newest first; reads only the newest `limit` batches (each holds at least one record)."""
        limit = min(limit, RETAINED_RECORDS)
        if limit <= 0:
            return []
        prefix = self._job(job_id, kind + "/")
        try:
            batches = self.client.get_prefix(prefix, limit=limit, newest_first=True)
        except EtcdError as error:
            raise (StoreUnavailable if isinstance(error, EtcdUnavailableError) else StoreError)(
                str(error)
            ) from error
        if not batches:
            return []
        first_kept = _batch_end(batches[0].key) - RETAINED_RECORDS
        out: list[dict[str, object]] = []
        for kv in batches:
            start = int(kv.key.rsplit("/", 1)[1].split("-")[0])
            for offset, record in reversed(list(enumerate(json.loads(kv.value)))):
                if start + offset < first_kept or len(out) >= limit:
                    return out
                out.append(record)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._own_client:
            self.client.close()


def _batch_end(key: str) -> int:
    first, count = key.rsplit("/", 1)[1].split("-")
    return int(first) + int(count)


def _check_assignments(assignments: Sequence[Assignment]) -> None:
    ranks = sorted(a.rank for a in assignments)
    if ranks != list(range(len(assignments))):
        raise ValueError(f"assignments must hold ranks 0..{len(assignments) - 1} once each, got {ranks}")
