"""Where ekko is measured: the WAN emulator, the local multi-process cluster, the latency benchmark and the
recommender scenarios."""
