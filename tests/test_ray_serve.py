"""`peftstd serve --engine ray`: a local Ray cluster started by the test, replicas that Ray Serve's autoscaler adds
under load and removes after it, a rolling update to another export under load, and never a 5xx or a dropped
connection. Everything on 127.0.0.1, with bounded load; the cluster stops with the server."""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time

import httpx
import pytest
from conftest import Server, free_port, peftstd

AUTOSCALING = ["--min-replicas", "1", "--max-replicas", "2", "--target-ongoing-requests", "2", "--upscale-delay-s", "1",
               "--downscale-delay-s", "3", "--look-back-period-s", "2"]
ALLOWED = {200, 429, 503}  # 429 and 503 are documented refusals (rate limit, full queue); nothing else may come


class Load:
    """A closed loop of `concurrency` clients posting to `url` from a thread until stopped; counts each status,
    each transport error and which replica answered."""

    def __init__(self, url: str, concurrency: int):
        self.url, self.concurrency = url, concurrency
        self.statuses, self.errors, self.replicas = collections.Counter(), collections.Counter(), collections.Counter()
        self.running = True
        self.thread = threading.Thread(target=asyncio.run, args=(self.run(),), daemon=True)
        self.thread.start()

    async def run(self):
        async with httpx.AsyncClient(timeout=60) as client:
            async def worker(i: int):
                while self.running:
                    try:
                        answer = await client.post(self.url, json={"inputs": [f"a wonderful moving film {i}"]})
                        self.statuses[answer.status_code] += 1
                        self.replicas[answer.headers.get("x-peftstd-replica")] += 1
                    except httpx.HTTPError as error:
                        self.errors[type(error).__name__] += 1

            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

    def stop(self) -> Load:
        self.running = False
        self.thread.join(120)
        assert not self.thread.is_alive(), "the load did not stop"
        return self


class RayServer(Server):
    """The server's stdout read line by line as it comes (replica counts, the cluster address)."""

    def __init__(self, *args: str):
        self.metrics_port = free_port()
        super().__init__(*args, "--ray-metrics-port", str(self.metrics_port), wait=False)
        self.lines: list[str] = []
        threading.Thread(target=self.read, daemon=True).start()
        self.wait_ready(180)

    def read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if found := re.search(pattern, line):
                    return found
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n" + "\n".join(self.lines[-30:]))


@pytest.fixture(scope="module")
def second_export(trained, tmp_path_factory):
    """Another export (the bottleneck-adapter run) for the rolling update: another model, another export_sha256."""
    out = tmp_path_factory.mktemp("ray-exports") / "adapter"
    result = peftstd("export", str(trained["adapter"]), "--budget", "100", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ray_server(exported):
    server = RayServer(f"sentiment={exported}", "--engine", "ray", *AUTOSCALING)
    yield server
    assert server.stop() == 0, "\n".join(server.lines[-30:])


def served_version(server: Server) -> str:
    return httpx.get(f"{server.url}/v1/models/sentiment", timeout=10).json()["export_sha256"]


def test_load_adds_a_replica_and_its_end_removes_it_with_no_5xx(ray_server, exported):
    assert ray_server.wait_for(r"replicas (\d+) at", timeout=10).group(1) == "1"
    load = Load(f"{ray_server.url}/v1/models/sentiment/predict", concurrency=12)
    try:
        ray_server.wait_for(r"replicas 2 at", timeout=120)
        time.sleep(3)  # both replicas answer
    finally:
        load.stop()
    assert not load.errors, load.errors
    assert set(load.statuses) <= ALLOWED and load.statuses[200] > 100, load.statuses
    assert len([r for r in load.replicas if r]) == 2, load.replicas  # each answer names its replica: two did
    after = len(ray_server.lines)
    ray_server.wait_for(r"replicas 1 at .*\(running 1\)$", timeout=90, after=after)

    # Ray's metrics port: its own replica and queue series, and every replica's peftstd_ series with a replica label
    text = httpx.get(f"http://127.0.0.1:{ray_server.metrics_port}/metrics", timeout=10).text
    assert "ray_serve_deployment_replica_healthy{" in text and "ray_serve_autoscaling_target_replicas{" in text
    mirrored = re.findall(r'^ray_peftstd_requests_total\{[^}]*replica="(\w+)"[^}]*status="200"[^}]*\} ([\d.e+]+)', text, re.MULTILINE)
    assert mirrored and sum(float(v) for _, v in mirrored) > 0, text[-2000:]


def test_rolling_update_to_a_new_export_drops_nothing(ray_server, exported, second_export):
    old = served_version(ray_server)
    address = ray_server.wait_for(r"cluster (\S+)$", timeout=5).group(1)
    load = Load(f"{ray_server.url}/v1/models/sentiment/predict", concurrency=4)
    try:
        time.sleep(2)
        update = peftstd("serve", f"sentiment={second_export}", "--engine", "ray", "--ray-address", address, *AUTOSCALING)
        assert update.returncode == 0, update.stdout[-2000:] + update.stderr[-2000:]
        assert "running in" in update.stdout
        new = served_version(ray_server)
        time.sleep(2)
    finally:
        load.stop()
    assert new != old  # /v1/models names the export now served
    assert not load.errors, load.errors
    assert set(load.statuses) == {200}, load.statuses  # not even a refusal: old replicas answer until new ones serve
    assert len(load.replicas) >= 2  # answered by the old replica and the new one


def test_bad_ray_settings_are_one_line_errors(exported):
    result = peftstd("serve", str(exported), "--engine", "ray", "--min-replicas", "3", "--max-replicas", "2")
    assert result.returncode == 2 and "min_replicas 3 exceeds max_replicas 2" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

    result = peftstd("serve", str(exported), "--engine", "ray", "--ssl-certfile", __file__, "--ssl-keyfile", __file__)
    assert result.returncode == 2 and "TLS with engine ray is set on Ray's ingress" in result.stderr

    from peftstd.errors import ConfigError
    from peftstd.serve.ray_engine import build

    with pytest.raises(ConfigError, match="give `exports`"):
        build({"export": [str(exported)]})
    with pytest.raises(ConfigError, match="max_replicas"):
        build({"exports": [str(exported)], "config": {"max_replicas": 0}})


def test_adapter_changes_are_refused_on_a_ray_replica():
    """A run-time adapter load or unload would reach the one replica that took the request: refused with a 409."""
    from fastapi.testclient import TestClient

    from peftstd.serve.app import Lifecycle, ServerState, create_app
    from peftstd.serve.config import ServeConfig

    state = ServerState(ServeConfig(), {}, None, ready=True, replica="r1")
    with TestClient(Lifecycle(create_app(state), state)) as client:
        for answer in (client.post("/v1/adapters", json={"name": "b", "path": "/runs/b"}), client.delete("/v1/adapters/b")):
            assert answer.status_code == 409 and "one replica only" in answer.json()["error"]
            assert answer.headers["x-peftstd-replica"] == "r1"
