"""The real NVML backend (nvidia-ml-py, `import pynvml`). Construction fails without a driver or GPU.

Every query that a GPU generation does not support reads as 0 rather than failing the snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pynvml
from kedge.agent.model import GpuHealth

log = logging.getLogger(__name__)


def _or_zero(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except pynvml.NVMLError:
        return 0


def _link_errors(handle: Any, link: int, counter: int) -> int:
    return int(_or_zero(lambda: pynvml.nvmlDeviceGetNvLinkErrorCounter(handle, link, counter)))


class RealNvml:
    """HealthBackend over the NVIDIA driver."""

    def __init__(self) -> None:
        pynvml.nvmlInit()
        self._count = int(pynvml.nvmlDeviceGetCount())
        if self._count == 0:
            pynvml.nvmlShutdown()
            raise RuntimeError("NVML sees no GPU")
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(self._count)]
        self._uuid_index = {str(pynvml.nvmlDeviceGetUUID(h)): i for i, h in enumerate(self._handles)}
        self._events = pynvml.nvmlEventSetCreate()
        for handle in self._handles:
            try:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self._events)
            except pynvml.NVMLError as exc:
                log.warning("nvml_xid_events_unsupported error=%s", exc)
        self._lock = threading.Lock()

    def gpu_count(self) -> int:
        return self._count

    def snapshot(self, index: int) -> GpuHealth:
        h = self._handles[index]
        p = pynvml
        gpu = GpuHealth(index=index, uuid=str(p.nvmlDeviceGetUUID(h)))
        gpu.temperature_c = float(_or_zero(lambda: p.nvmlDeviceGetTemperature(h, p.NVML_TEMPERATURE_GPU)))
        gpu.power_w = float(_or_zero(lambda: p.nvmlDeviceGetPowerUsage(h))) / 1000.0
        gpu.ecc_volatile_uncorrected = int(_or_zero(lambda: self._ecc(h, p.NVML_VOLATILE_ECC)))
        gpu.ecc_aggregate_uncorrected = int(_or_zero(lambda: self._ecc(h, p.NVML_AGGREGATE_ECC)))
        gpu.retired_pages_pending = int(_or_zero(lambda: p.nvmlDeviceGetRetiredPagesPendingStatus(h)))
        remap = _or_zero(lambda: p.nvmlDeviceGetRemappedRows(h))
        gpu.row_remap_failures = int(remap[3]) if isinstance(remap, tuple) else 0
        gpu.throttle_reasons = int(_or_zero(lambda: p.nvmlDeviceGetCurrentClocksEventReasons(h)))
        gpu.pcie_gen = int(_or_zero(lambda: p.nvmlDeviceGetCurrPcieLinkGeneration(h)))
        gpu.pcie_gen_max = int(_or_zero(lambda: p.nvmlDeviceGetMaxPcieLinkGeneration(h)))
        gpu.pcie_width = int(_or_zero(lambda: p.nvmlDeviceGetCurrPcieLinkWidth(h)))
        gpu.pcie_width_max = int(_or_zero(lambda: p.nvmlDeviceGetMaxPcieLinkWidth(h)))
        gpu.sm_clock_mhz = int(_or_zero(lambda: p.nvmlDeviceGetClockInfo(h, p.NVML_CLOCK_SM)))
        gpu.recovery_action = int(_or_zero(lambda: self._recovery_action(h)))
        self._nvlink(h, gpu)
        return gpu

    @staticmethod
    def _ecc(handle: Any, counter: int) -> int:
        return int(
            pynvml.nvmlDeviceGetTotalEccErrors(handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counter)
        )

    @staticmethod
    def _recovery_action(handle: Any) -> int:
        values = pynvml.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION])
        value = values[0]
        if value.nvmlReturn != pynvml.NVML_SUCCESS:
            return 0
        return int(value.value.uiVal)

    @staticmethod
    def _nvlink(handle: Any, gpu: GpuHealth) -> None:
        p = pynvml
        for link in range(p.NVML_NVLINK_MAX_LINKS):
            try:
                active = p.nvmlDeviceGetNvLinkState(handle, link)
            except p.NVMLError:
                continue  # link absent on this GPU
            if not active:
                gpu.nvlink_down += 1
            gpu.nvlink_replay_errors += _link_errors(handle, link, p.NVML_NVLINK_ERROR_DL_REPLAY)
            gpu.nvlink_recovery_errors += _link_errors(handle, link, p.NVML_NVLINK_ERROR_DL_RECOVERY)

    def wait_xid(self, timeout_s: float) -> list[tuple[int, int]]:
        try:
            data = pynvml.nvmlEventSetWait_v2(self._events, int(timeout_s * 1000))
        except pynvml.NVMLError_Timeout:
            return []
        uuid = str(pynvml.nvmlDeviceGetUUID(data.device))
        return [(self._uuid_index.get(uuid, -1), int(data.eventData))]

    def close(self) -> None:
        with self._lock:
            try:
                pynvml.nvmlEventSetFree(self._events)
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass
