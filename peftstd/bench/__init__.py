"""Benchmarks: interleaved latency/throughput of every backend, with the machine written down."""
