"""The host pool: allocated once, bounded, reused; acquire blocks (backpressure) and wakes on close."""

from __future__ import annotations

import threading

import pytest
from kedge.ckpt.engine.pool import HostPool, PoolClosed, round_slab_bytes

pytestmark = pytest.mark.timeout(30)


def test_slab_size_is_a_power_of_two_and_capacity_is_whole_slabs() -> None:
    assert round_slab_bytes(100_000) == 131_072
    pool = HostPool(capacity_bytes=300_000, slab_bytes=100_000, pin=False)
    try:
        assert pool.wait_ready(10)
        assert pool.slab_bytes == 131_072
        assert pool.slab_count == 2
        assert pool.capacity_bytes == 262_144
    finally:
        pool.close()


def test_slabs_are_reused_not_reallocated() -> None:
    pool = HostPool(capacity_bytes=1 << 17, slab_bytes=1 << 16, pin=False)
    try:
        first = pool.acquire(timeout_s=5)
        address = first.buffer.data_ptr()
        pool.release(first)
        addresses = set()
        for _ in range(6):
            slab = pool.acquire(timeout_s=5)
            addresses.add(slab.buffer.data_ptr())
            pool.release(slab)
        assert address in addresses
        assert len(addresses) <= 2
    finally:
        pool.close()


def test_acquire_blocks_until_a_slab_is_released() -> None:
    pool = HostPool(capacity_bytes=1 << 16, slab_bytes=1 << 16, pin=False)
    try:
        held = pool.acquire(timeout_s=5)
        got = threading.Event()

        def taker() -> None:
            pool.release(pool.acquire(timeout_s=10))
            got.set()

        thread = threading.Thread(target=taker)
        thread.start()
        assert not got.wait(0.2)  # the only slab is held: the taker waits
        pool.release(held)
        assert got.wait(5)
        thread.join(5)
        with pytest.raises(TimeoutError):
            slab = pool.acquire(timeout_s=5)
            pool.acquire(timeout_s=0.1)
        pool.release(slab)
    finally:
        pool.close()


def test_close_and_stop_wake_a_waiting_acquire() -> None:
    pool = HostPool(capacity_bytes=1 << 16, slab_bytes=1 << 16, pin=False)
    pool.acquire(timeout_s=5)
    stop = threading.Event()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.acquire(timeout_s=60, stop=stop)
        except PoolClosed as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1
    pool.close()
    with pytest.raises(PoolClosed):
        pool.acquire(timeout_s=1)
