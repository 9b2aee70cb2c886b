"""Client of the coordinator's Admin service: hands callers plain dicts (JSON-ready), not protobuf."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from kedge.coordinator.errors import CoordinatorUnreachable
from kedge.proto import admin_pb2, admin_pb2_grpc


def get_status(address: str, job_id: str = "", recent: int = 10, timeout_s: float = 5.0) -> dict[str, Any]:
    """The coordinator's status as a dict shaped like admin.proto's StatusResponse (snake_case keys,
    enums as names, 64-bit integers as ints)."""
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            resp = stub.GetStatus(admin_pb2.StatusRequest(job_id=job_id, recent=recent), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise CoordinatorUnreachable(f"coordinator {address} unreachable: {exc.code().name}") from exc
    out = MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _ints(out)  # type: ignore[no-any-return]


_INT64_FIELDS = frozenset(
    {
        "incarnation",
        "step",
        "wall_time_ns",
        "heartbeat_mono_ns",
        "rss_bytes",
        "last_enqueued_seq",
        "last_started_seq",
        "last_completed_seq",
        "enqueued_mono_ns",
        "started_mono_ns",
        "completed_mono_ns",
    }
)


def _ints(value: Any, key: str = "") -> Any:
    """MessageToDict writes int64 fields as strings (JSON's number limits); give them back as ints."""
    if isinstance(value, dict):
        return {k: _ints(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v, key) for v in value]
    if key in _INT64_FIELDS and isinstance(value, str):
        return int(value)
    return value
