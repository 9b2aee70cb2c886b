"""The kedge node agent: launches or adopts a node's ranks, watches them (progress pages, psutil,
NVML) and relays verdicts to the coordinator. Never imports torch."""
