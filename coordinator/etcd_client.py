"""A small synchronous etcd v3 client: the only module of kedge that imports `aetcd`.

aetcd is asyncio-based while the coordinator's code is synchronous (gRPC servicer threads, an
executor thread), so one event loop runs in a dedicated daemon thread and every call is submitted
to it with a bounded wait: nothing here blocks longer than `timeout_s` (plus a small margin), even
against a paused etcd. Callers get the project's own types (`KeyValue`, `Compare`, `Put`, ...) and
errors:

    EtcdError
     ├── EtcdUnavailableError   no answer in time: connection refused, deadline, stream broken;
     │                          the client moves on to the next endpoint for the next call
     └── EtcdRequestError       etcd answered and refused the request (bad argument, no lease)

A transaction whose compare fails is not an error: `TxnResult.succeeded` is False.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aetcd
import aetcd.utils
from aetcd import rpc

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "EtcdError",
    "EtcdRequestError",
    "EtcdUnavailableError",
    "Get",
    "KeyValue",
    "Put",
    "TxnResult",
    "parse_endpoints",
]

log = logging.getLogger(__name__)

# Beyond the per-RPC deadline, how long a caller waits for the loop thread to hand back a result.
_LOOP_MARGIN_S = 1.0
# gRPC reconnect backoff grows to 120 s by default; a coordinator must notice a returned etcd sooner.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


class EtcdError(Exception):
    """Base of every error raised by this module."""


class EtcdUnavailableError(EtcdError):
    """etcd did not answer in time (down, paused, partitioned)."""


class EtcdRequestError(EtcdError):
    """etcd answered and refused the request."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored, with the revisions that fencing compares against."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease_id: int


CompareTarget = Literal["create", "mod", "version", "value", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]
_TARGETS = {
    "create": (rpc.Compare.CREATE, "create_revision"),
    "mod": (rpc.Compare.MOD, "mod_revision"),
    "version": (rpc.Compare.VERSION, "version"),
    "value": (rpc.Compare.VALUE, "value"),
    "lease": (rpc.Compare.LEASE, "lease"),
}
_OPS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS, ">": rpc.Compare.GREATER}


@dataclass(frozen=True, slots=True)
class Compare:
    """A transaction guard: `target` of `key` `op` `operand` (create revision 0: key absent)."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: int | bytes

    def to_message(self) -> Any:
        target, field_name = _TARGETS[self.target]
        message = rpc.Compare(key=self.key.encode(), result=_OPS[self.op], target=target)
        setattr(message, field_name, self.operand)
        return message


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease_id: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    key: str
    prefix: bool = False


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the compares held, the store revision, and one list per Get op, in order."""

    succeeded: bool
    revision: int
    ranges: list[list[KeyValue]] = field(default_factory=list)


def parse_endpoints(spec: str) -> list[str]:
    """`HOST:PORT[,HOST:PORT...]` (an `etcd://` prefix allowed) → checked list of endpoints."""
    body = spec.removeprefix("etcd://").strip().strip("/")
    endpoints = [part.strip() for part in body.split(",") if part.strip()]
    if not endpoints:
        raise ValueError(f"no etcd endpoint in {spec!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad etcd endpoint {endpoint!r} in {spec!r}: expected HOST:PORT")
    return endpoints


def _range_end(prefix: bytes) -> bytes:
    return aetcd.utils.prefix_range_end(prefix)  # type: ignore[no-any-return]


def _key_value(kv: Any) -> KeyValue:
    return KeyValue(
        key=kv.key.decode(),
        value=bytes(kv.value),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
        version=int(kv.version),
        lease_id=int(kv.lease),
    )


def _request_op(op: Op) -> Any:
    key = op.key.encode()
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=op.value, lease=op.lease_id))
    end = _range_end(key) if op.prefix else b""
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=end))


def _translate(error: BaseException) -> EtcdError:
    if isinstance(error, EtcdError):
        return error
    unavailable = (
        aetcd.ConnectionFailedError,
        aetcd.ConnectionTimeoutError,
        aetcd.WatchTimeoutError,
        asyncio.TimeoutError,
        concurrent.futures.TimeoutError,
        OSError,
    )
    if isinstance(error, unavailable):
        return EtcdUnavailableError(f"etcd unavailable: {type(error).__name__}: {error}")
    if isinstance(error, rpc.AioRpcError):
        status = error.code()
        if status in (rpc.StatusCode.UNAVAILABLE, rpc.StatusCode.DEADLINE_EXCEEDED, rpc.StatusCode.CANCELLED):
            return EtcdUnavailableError(f"etcd unavailable: {status.name}: {error.details()}")
        return EtcdRequestError(f"etcd refused: {status.name}: {error.details()}")
    return EtcdRequestError(f"etcd refused: {type(error).__name__}: {error}")


class EtcdClient:
    """Synchronous etcd v3 client over several endpoints; thread-safe; `close()` stops its thread."""

    def __init__(self, endpoints: Sequence[str], *, timeout_s: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._endpoint_index = 0
        self._client: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kedge-etcd-loop", daemon=True)
        self._thread.start()
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------------

    def _run(self, make: Any, timeout_s: float | None = None) -> Any:
        """Runs `make(aetcd_client)` on the loop; bounded; translates errors; fails over endpoints."""
        if self._closed:
            raise EtcdUnavailableError("etcd client closed")
        wait_s = (timeout_s if timeout_s is not None else self.timeout_s) + _LOOP_MARGIN_S
        used: list[Any] = []  # the aetcd client the call ran on, to fail over from that one only
        future = asyncio.run_coroutine_threadsafe(self._call(make, used), self._loop)
        try:
            return future.result(timeout=wait_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            message = f"etcd at {self.endpoint} did not answer within {wait_s:.1f}s"
            self._failover(used, message)
            raise EtcdUnavailableError(message) from None
        except concurrent.futures.CancelledError:  # another caller's reconnect closed this channel
            raise EtcdUnavailableError(f"etcd call to {self.endpoint} cut off by a reconnect") from None
        except EtcdUnavailableError as error:
            self._failover(used, str(error))
            raise

    async def _call(self, make: Any, used: list[Any]) -> Any:
        if self._client is None:
            self._client = aetcd.Client(
                *self._host_port(), timeout=self.timeout_s, options=dict(_CHANNEL_OPTIONS)
            )
        used.append(self._client)
        try:
            return await make(self._client)
        except BaseException as error:  # every failure becomes an EtcdError
            if isinstance(error, asyncio.CancelledError):
                raise
            raise _translate(error) from error

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._endpoint_index]

    def _host_port(self) -> tuple[str, int]:
        host, _, port = self.endpoint.rpartition(":")
        return host, int(port)

    def _failover(self, used: list[Any], why: str) -> None:
        """Drops the channel the failed call used (a broken channel or watch stream is not reused)
        and moves to the next endpoint. The swap runs on the loop thread, where calls build their
        client, so swaps never interleave and callers failing on one channel move on only once."""
        if used:
            self._loop.call_soon_threadsafe(self._swap_client, used[0], why)

    def _swap_client(self, failed: Any, why: str) -> None:
        if failed is None or self._client is not failed:
            return
        self._client = None
        self._endpoint_index = (self._endpoint_index + 1) % len(self.endpoints)
        self._loop.create_task(_close_quietly(failed))
        log.debug("etcd_failover reason=%r next_endpoint=%s", why, self.endpoint)

    def close(self) -> None:
        """Closes the channel and stops the loop thread (bounded)."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            future = asyncio.run_coroutine_threadsafe(_close_quietly(self._client), self._loop)
            with contextlib.suppress(Exception):
                future.result(timeout=self.timeout_s)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_pending(), self._loop).result(timeout=self.timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=self.timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- key-value ------------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        async def op(c: Any) -> Any:
            return await c.kvstub.Range(rpc.RangeRequest(key=key.encode()), timeout=self.timeout_s)

        response = self._run(_connected(op))
        return _key_value(response.kvs[0]) if response.kvs else None

    def get_prefix(self, prefix: str, *, limit: int = 0, newest_first: bool = False) -> list[KeyValue]:
        """Keys under `prefix` in key order (reversed with `newest_first`), at most `limit` (0: all)."""
        encoded = prefix.encode()
        order = rpc.RangeRequest.DESCEND if newest_first else rpc.RangeRequest.ASCEND
        request = rpc.RangeRequest(
            key=encoded,
            range_end=_range_end(encoded),
            limit=limit,
            sort_order=order,
            sort_target=rpc.RangeRequest.KEY,
        )

        async def op(c: Any) -> Any:
            return await c.kvstub.Range(request, timeout=self.timeout_s)

        return [_key_value(kv) for kv in self._run(_connected(op)).kvs]

    def put(self, key: str, value: bytes, *, lease_id: int = 0) -> int:
        """Writes unconditionally; returns the store revision."""
        return self.txn([], [Put(key, value, lease_id)]).revision

    def delete_prefix(self, prefix: str) -> int:
        return self.txn([], [Delete(prefix, prefix=True)]).revision

    def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """One atomic transaction: if every compare holds, `success` runs, else `failure`."""
        request = rpc.TxnRequest(
            compare=[c.to_message() for c in compare],
            success=[_request_op(o) for o in success],
            failure=[_request_op(o) for o in failure],
        )

        async def op(c: Any) -> Any:
            return await c.kvstub.Txn(request, timeout=self.timeout_s)

        response = self._run(_connected(op))
        ranges = [
            [_key_value(kv) for kv in r.response_range.kvs]
            for r in response.responses
            if r.WhichOneof("response") == "response_range"
        ]
        return TxnResult(bool(response.succeeded), int(response.header.revision), ranges)

    # -- leases ---------------------------------------------------------------------------------

    def grant_lease(self, ttl_s: int) -> int:
        """A new lease of `ttl_s` seconds; returns its id."""

        async def op(c: Any) -> Any:
            return await c.lease(ttl_s)

        return int(self._run(_connected(op)).id)

    def keep_alive(self, lease_id: int) -> int:
        """Refreshes the lease once; returns its TTL now (<= 0: the lease has expired)."""

        async def op(c: Any) -> Any:
            return await c.refresh_lease(lease_id)

        reply = self._run(_connected(op))
        return int(reply.TTL) if reply is not None else 0

    def revoke_lease(self, lease_id: int) -> None:
        """Revokes the lease, deleting every key bound to it; an unknown lease is not an error."""

        async def op(c: Any) -> Any:
            with contextlib.suppress(aetcd.ClientError, rpc.AioRpcError):
                await c.revoke_lease(lease_id)

        self._run(_connected(op))

    # -- watch ----------------------------------------------------------------------------------

    def wait_for_change(self, key: str, *, after_revision: int, timeout_s: float) -> bool:
        """Waits up to `timeout_s` for a change of `key` after `after_revision`; True if one came."""

        async def op(c: Any) -> Any:
            try:
                event = await c.watch_once(key.encode(), timeout=timeout_s, start_revision=after_revision + 1)
            except aetcd.WatchTimeoutError:
                return False
            except aetcd.RevisionCompactedError:  # history is gone: it did change; read it again
                return True
            if isinstance(event, BaseException):  # aetcd hands a broken stream to the waiter
                raise event
            return True

        return bool(self._run(_connected(op), timeout_s=timeout_s + self.timeout_s))


def _connected(op: Any) -> Any:
    async def run(client: Any) -> Any:
        await client.connect()
        return await op(client)

    return run


async def _cancel_pending() -> None:
    """Cancels what gRPC left running on the loop, so stopping it destroys no pending task."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), timeout=2.0)
