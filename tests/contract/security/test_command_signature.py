"""The coordinator signs a command the way the agent checks it: the server's signing step, the wire
bytes, and the agent client's verification agree; any change on the way breaks the signature."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from kedge.agent import auth as agent_auth
from kedge.coordinator import auth
from kedge.coordinator.server import CoordinatorService
from kedge.proto import common_pb2
from kedge.proto import coordinator_pb2 as pb

pytestmark = pytest.mark.timeout(10)
TOKEN = b"contract-token-0123456789"


def _wire_command() -> bytes:
    key = auth.derive_command_key(TOKEN)
    service = CoordinatorService(None, None, threading.Event(), SimpleNamespace(command_key=lambda: key))  # type: ignore[arg-type]
    start = pb.StartWorkers(
        world_size=2,
        master_addr="10.0.0.1",
        master_port=29500,
        workers=[common_pb2.WorkerSpec(rank=r, local_rank=r) for r in range(2)],
        restore_step=-1,
        env={"B": "2", "A": "1", "C": "3"},  # a map: its order must not matter
    )
    command = pb.Command(command_id="c-1", job_id="job", incarnation=7, start=start)
    signed = service._signed(command)
    assert len(signed.signature) == 32
    return signed.SerializeToString()


def _agent_check(data: bytes, verifier: agent_auth.CommandVerifier) -> str | None:
    msg = pb.Command.FromString(data)
    unsigned = pb.Command()
    unsigned.CopyFrom(msg)
    unsigned.ClearField("signature")
    return verifier.check(
        command_id=msg.command_id,
        job_id=msg.job_id,
        incarnation=msg.incarnation,
        payload=unsigned.SerializeToString(deterministic=True),
        signature=msg.signature,
    )


def test_signed_on_the_coordinator_verifies_on_the_agent() -> None:
    verifier = agent_auth.CommandVerifier("job", agent_auth.derive_command_key(TOKEN))
    assert _agent_check(_wire_command(), verifier) is None


def test_changed_fields_break_the_signature() -> None:
    for change in ("port", "incarnation", "env"):
        msg = pb.Command.FromString(_wire_command())
        if change == "port":
            msg.start.master_port = 1
        elif change == "incarnation":
            msg.incarnation = 8
        else:
            msg.start.env["LD_PRELOAD"] = "/tmp/evil.so"
        verifier = agent_auth.CommandVerifier("job", agent_auth.derive_command_key(TOKEN))
        assert _agent_check(msg.SerializeToString(), verifier) == "bad signature", change


def test_unsigned_when_no_token_and_then_refused_by_a_keyed_agent() -> None:
    service = CoordinatorService(None, None, threading.Event(), None)  # type: ignore[arg-type]
    unsigned = service._signed(pb.Command(command_id="c", job_id="job", incarnation=1))
    assert unsigned.signature == b""
    verifier = agent_auth.CommandVerifier("job", agent_auth.derive_command_key(TOKEN))
    assert _agent_check(unsigned.SerializeToString(), verifier) == "unsigned command"
