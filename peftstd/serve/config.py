"""The `serve` settings: one typed, validated section like the recipe schema (unknown keys rejected with the
closest name), read from `--config serve.yaml` and overridden by flags, each setting also a flag."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from peftstd.basics.section import Section
from peftstd.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="address to listen on; any other than loopback needs a key file")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    keys: Path | None = Field(None, description="API key file (`peftstd serve keys add`); without it every request is allowed")
    artifact: str = Field("auto", description="artifact to serve: auto (of those that passed the gate, the one measured "
                          "fastest on this machine: at export, or at start on another CPU), fp32, int8, or a kind/file of export.json")
    runtime: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto", description="engine of the encoder tasks' artifacts; auto: with artifact auto, the one measured fastest here "
        "(onnxruntime, or openvino where installed), else onnxruntime")
    threads: int | None = Field(None, ge=1, description="intra-op threads per model (default: the engine's)")
    streams: int | None = Field(None, ge=1, description="batches of one model that run at once, the threads split between "
                                "them (default: 2 on a machine with 2 or more cores, else 1; bench/results/serve_load.md)")
    max_batch_size: int = Field(32, ge=1, description="rows per model call at most")
    max_batch_tokens: int = Field(16384, ge=1, description="padded tokens per model call at most (rows x longest row)")
    max_padding: float = Field(0.2, ge=0, le=1, description="largest share of a batch's tokens that may be padding; inputs "
                               "further apart in length wait for the next model call")
    max_wait_ms: float = Field(0.0, ge=0, description="how long a batch waits for more requests; 0: take what is queued when the model is free")
    max_queue: int = Field(128, ge=1, description="rows waiting per model at most; more is answered 503 with Retry-After "
                           "(128 rows is about half a second of work for the sentiment export on 2 cores)")
    deadline_ms: int = Field(30000, ge=1, description="a request not answered by then gets 504 (and is dropped before it reaches the model)")
    max_body_bytes: int = Field(2_000_000, ge=1, description="request body size at most (413)")
    max_inputs: int = Field(64, ge=1, description="inputs per request at most (422)")
    max_chars: int = Field(20000, ge=1, description="characters per input text at most, checked before tokenizing (422)")
    max_sequences: int = Field(32, ge=1, description="causal LMs: sequences in one running decode batch at most (continuous "
                               "batching: requests join and leave it at token boundaries)")
    prefill_tokens: int = Field(512, ge=1, description="causal LMs: prompt tokens prefilled between two decode steps at most "
                                "(the first waiting prompt always goes in), so running sequences keep their pace")
    max_new_tokens: int = Field(48, ge=1, description="generative models: tokens generated when a request names no max_new_tokens")
    max_new_tokens_limit: int = Field(256, ge=1, description="generative models: the largest max_new_tokens a request may ask for")
    rate_limit: float = Field(0.0, ge=0, description="requests per second per API key (per client address without keys); 0: off")
    rate_burst: int = Field(20, ge=1, description="requests a key may send at once above its rate")
    drift_window: int = Field(1000, ge=1, description="predictions per model kept for drift monitoring (PSI and JS distance "
                              "against the export's monitor.json, at /metrics)")
    drift_window_s: float = Field(3600.0, gt=0, description="drift monitoring forgets predictions older than this many seconds")
    request_log: str | None = Field(None, description="write one JSON line per request to this file ('-': standard output); "
                                    "off when unset")
    log_inputs: bool = Field(False, description="put each request's input texts in the request log, personal data masked "
                             "(e-mail, phone, card, IBAN, ID number, IP address, keys)")
    drain_timeout_s: float = Field(30.0, gt=0, description="on SIGTERM, how long accepted requests may take before the process exits")
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM); with ssl_keyfile, serve HTTPS")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("warning", description="uvicorn's log level")
    engine: Literal["uvicorn", "ray"] = Field("uvicorn", description="uvicorn: one process; ray: replicas on a Ray cluster, "
                                              "added and removed by Ray Serve's autoscaler (README: Scaling out on Ray)")
    ray_address: str | None = Field(None, description="ray: deploy to (or update in place on) this running cluster and "
                                    "exit, e.g. auto or 10.0.0.5:6379; unset: start a local cluster and serve until SIGTERM")
    min_replicas: int = Field(1, ge=1, description="ray: replicas kept when idle")
    max_replicas: int = Field(2, ge=1, description="ray: replicas at most (default: one per 1-CPU replica on this 2-core machine)")
    target_ongoing_requests: float = Field(4.0, gt=0, description="ray: requests in flight per replica the autoscaler "
                                           "aims for; more on average over the look-back period adds replicas")
    max_ongoing_requests: int = Field(32, ge=1, description="ray: requests one replica takes at once (its batches draw "
                                      "from these); more wait in Ray's router")
    upscale_delay_s: float = Field(3.0, ge=0, description="ray: how long the load must call for more replicas before one is added")
    downscale_delay_s: float = Field(30.0, ge=0, description="ray: how long the load must call for fewer replicas before one is removed")
    look_back_period_s: float = Field(5.0, gt=0, description="ray: the window the autoscaler averages ongoing requests over")
    replica_cpus: float = Field(1.0, gt=0, description="ray: CPUs reserved per replica; its model threads default to this many")
    ray_metrics_port: int = Field(8080, ge=1, le=65535, description="ray, local cluster: port of Ray's Prometheus "
                                  "endpoint (replicas, queue and per-replica load, and every replica's peftstd_ series)")

    @model_validator(mode="after")
    def check(self) -> ServeConfig:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile")
        if self.engine == "ray" and self.ssl_certfile is not None:
            raise ValueError("TLS with engine ray is set on Ray's ingress (http_options ssl_certfile and ssl_keyfile in a "
                             "Serve config) or on a load balancer in front, not on the replicas")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}")
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} exceeds max_new_tokens_limit {self.max_new_tokens_limit}")
        for path in (self.keys, self.ssl_certfile, self.ssl_keyfile):
            if path is not None and path != self.keys and not path.is_file():
                raise ValueError(f"{str(path)!r} does not exist")
        return self

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag (`max_batch_size` -> `--max-batch-size`), defaulting to unset so the config file wins."""
    for name, field in ServeConfig.model_fields.items():
        flag, text = "--" + name.replace("_", "-"), f"{field.description} (default {field.default})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=f"serve_{name}", default=None, action="store_const", const=True, help=text)
        else:
            parser.add_argument(flag, dest=f"serve_{name}", default=None, metavar=name.upper(), help=text)


def load_serve_config(path: str | None, args: argparse.Namespace) -> ServeConfig:
    from peftstd.config.load import read_yaml

    raw = read_yaml(path) if path else {}
    raw.update({name: value for name in ServeConfig.model_fields if (value := getattr(args, f"serve_{name}", None)) is not None})
    return validated(raw)


def validated(raw) -> ServeConfig:
    """The serve settings, or a one-line `ConfigError` naming the first problem (and the closest key to a misspelt one)."""
    from peftstd.config.load import describe

    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"serve config: {describe(error, ServeConfig)}") from None
