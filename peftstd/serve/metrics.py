"""Prometheus metrics of `peftstd serve` at GET /metrics (scope `metrics`), with prometheus-client.

Named in the style of the serving tools people already scrape (Triton's `nv_inference_request_duration_us`,
`nv_inference_queue_duration_us`; text-embeddings-inference's `te_request_*`, `te_batch_*`): requests by model,
route and status; request, queue, tokenization and inference time; batch size and padding; queue depth;
rejections by reason; one `peftstd_model_info` series per model carrying what it serves; and prediction drift
per model and feature against the export's monitor.json (`peftstd_drift_psi`, `peftstd_drift_js_distance`,
computed at scrape time over the rolling window, and `peftstd_drift_window_size`). `deploy/prometheus/alerts.yml`
alerts on these names.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128)
SHARE = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


class Metrics:
    """One registry per server (not prometheus-client's global one), so several apps in one process stay apart."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("peftstd_requests", "HTTP requests answered, by model, route template and status",
                                ["model", "route", "status"], registry=registry)
        self.request_seconds = Histogram("peftstd_request_duration_seconds", "time from request to response, by model and route",
                                         ["model", "route"], buckets=SECONDS, registry=registry)
        self.in_flight = Gauge("peftstd_requests_in_flight", "requests being handled", registry=registry)
        self.rejections = Counter("peftstd_rejections", "requests refused, by reason (auth, scope, rate, size, input, queue, "
                                  "deadline, disconnected)", ["reason"], registry=registry)
        self.tokenize_seconds = Histogram("peftstd_tokenization_duration_seconds", "tokenization time per request",
                                          ["model"], buckets=SECONDS, registry=registry)
        self.queue_seconds = Histogram("peftstd_queue_duration_seconds", "time an input waited in the queue for its batch",
                                       ["model"], buckets=SECONDS, registry=registry)
        self.inference_seconds = Histogram("peftstd_inference_duration_seconds", "model time per batch",
                                           ["model"], buckets=SECONDS, registry=registry)
        self.batch_rows = Histogram("peftstd_batch_size", "rows per batch", ["model"], buckets=ROWS, registry=registry)
        self.batch_padding = Histogram("peftstd_batch_padding_ratio", "share of a batch's tokens that are padding",
                                       ["model"], buckets=SHARE, registry=registry)
        self.queue_rows = Gauge("peftstd_queue_rows", "inputs waiting for a batch", ["model"], registry=registry)
        self.queue_capacity = Gauge("peftstd_queue_capacity_rows", "inputs that may wait for a batch before requests are "
                                    "refused (max_queue)", ["model"], registry=registry)
        self.drift = DriftCollector()
        registry.register(self.drift)
        self.time_to_first_token = Histogram("peftstd_time_to_first_token_seconds", "causal LMs: time from a request's arrival "
                                             "to its first generated token", ["model"], buckets=SECONDS, registry=registry)
        self.inter_token = Histogram("peftstd_inter_token_latency_seconds", "causal LMs: time between two tokens of one sequence",
                                     ["model"], buckets=SECONDS, registry=registry)
        self.generated_tokens = Counter("peftstd_generated_tokens", "causal LMs: tokens generated", ["model"], registry=registry)
        self.decode_rows = Histogram("peftstd_decode_batch_size", "causal LMs: sequences in one decode step (continuous "
                                     "batching)", ["worker"], buckets=ROWS, registry=registry)
        self.decode_seconds = Histogram("peftstd_decode_step_duration_seconds", "causal LMs: model time of one decode step",
                                        ["worker"], buckets=SECONDS, registry=registry)
        self.running_sequences = Gauge("peftstd_running_sequences", "causal LMs: sequences in the running decode batch",
                                       ["worker"], registry=registry)
        self.model_info = Gauge("peftstd_model_info", "1 for each served model; what it serves is in the labels",
                                ["model", "task", "artifact", "runtime", "export_sha256", "gate"], registry=registry)

    def add_model(self, name: str, worker, drift=None) -> None:
        """The model's info series, its queue depth (read at scrape time), its batches as they end, and its drift
        window (a `drift.DriftWindow`, None for an export without monitor.json)."""
        info = worker.predictor.describe()
        self.model_info.labels(name, info["task"], info["artifact"], info["runtime"], info.get("export_sha256") or "",
                               (info.get("gate") or {}).get("status", "")).set(1)  # an adapter run has no gate
        self.queue_rows.labels(name).set_function(lambda: worker.queued_rows)
        self.queue_capacity.labels(name).set(worker.max_queue)
        if drift is not None:
            self.drift.windows[name] = drift

        def on_batch(rows: int, padded: int, real: int, seconds: float, waits: list[float]) -> None:
            self.inference_seconds.labels(name).observe(seconds)
            self.batch_rows.labels(name).observe(rows)
            self.batch_padding.labels(name).observe(1 - real / padded if padded else 0.0)
            queue = self.queue_seconds.labels(name)
            for wait in waits:
                queue.observe(wait)

        worker.on_batch = on_batch

    def add_language_model(self, served, drift=None) -> None:
        """A causal LM's info series, its token timings and its drift window (prompts only); its worker's step
        metrics once per worker."""
        info, worker = served.describe(), served.worker
        if drift is not None:
            self.drift.windows[served.name] = drift
        self.model_info.labels(served.name, info["task"], info["artifact"], info["runtime"], info.get("export_sha256") or "",
                               (info.get("gate") or {}).get("status", "")).set(1)
        self.queue_rows.labels(served.name).set_function(lambda: worker.queued)
        self.queue_capacity.labels(served.name).set(worker.max_queue)
        if worker.on_step is None:
            rows, seconds = self.decode_rows.labels(worker.name), self.decode_seconds.labels(worker.name)
            self.running_sequences.labels(worker.name).set_function(lambda: worker.running)

            def on_step(count: int, took: float) -> None:
                rows.observe(count)
                seconds.observe(took)

            def on_token(stream, first: bool, took: float) -> None:
                name = stream.model_name
                (self.time_to_first_token if first else self.inter_token).labels(name).observe(took)
                self.generated_tokens.labels(name).inc()

            worker.on_step, worker.on_token = on_step, on_token

    def observe_request(self, model: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(model, route, str(status)).inc()
        self.request_seconds.labels(model, route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class DriftCollector(Collector):
    """PSI and Jensen-Shannon distance per model and feature, computed from each model's window when scraped."""

    def __init__(self):
        self.windows: dict = {}  # model name -> drift.DriftWindow

    def describe(self):
        return []  # computed per scrape; nothing to check at registration

    def collect(self):
        psi = GaugeMetricFamily("peftstd_drift_psi", "population stability index of a prediction feature over the window "
                                "against the export's held-out reference (0.1 moderate, 0.25 major)", labels=["model", "feature"])
        js = GaugeMetricFamily("peftstd_drift_js_distance", "Jensen-Shannon distance (natural log) of a prediction feature "
                               "over the window against the reference (drift above 0.1)", labels=["model", "feature"])
        size = GaugeMetricFamily("peftstd_drift_window_size", "predictions in the drift window", labels=["model"])
        for name, window in self.windows.items():
            count, figures = window.figures()
            size.add_metric([name], count)
            for feature, values in figures.items():
                psi.add_metric([name, feature], values["psi"])
                js.add_metric([name, feature], values["js"])
        yield from (psi, js, size)
