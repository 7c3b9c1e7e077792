"""A free TCP port on the loopback interface, for servers started on 127.0.0.1 (tests, benchmarks, a local Ray
cluster's side ports)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 and released; free unless another process takes it first."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
