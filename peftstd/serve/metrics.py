"""Prometheus metrics of `peftstd serve` at GET /metrics (scope `metrics`), with prometheus-client.

Named in the style of the serving tools people already scrape (Triton's `nv_inference_request_duration_us`,
`nv_inference_queue_duration_us`; text-embeddings-inference's `te_request_*`, `te_batch_*`): requests by model,
route and status; request, queue, tokenization and inference time; batch size and padding; queue depth;
rejections by reason; and one `peftstd_model_info` series per model carrying what it serves.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.model_info = Gauge("peftstd_model_info", "1 for each served model; what it serves is in the labels",
                                ["model", "task", "artifact", "runtime", "export_sha256", "gate"], registry=registry)

    def add_model(self, name: str, worker) -> None:
        """The model's info series, its queue depth (read at scrape time), and its batches as they end."""
        info = worker.predictor.describe()
        self.model_info.labels(name, info["task"], info["artifact"], info["runtime"], info.get("export_sha256") or "",
                               info["gate"]["status"]).set(1)
        self.queue_rows.labels(name).set_function(lambda: worker.queued_rows)

        def on_batch(rows: int, padded: int, real: int, seconds: float, waits: list[float]) -> None:
            self.inference_seconds.labels(name).observe(seconds)
            self.batch_rows.labels(name).observe(rows)
            self.batch_padding.labels(name).observe(1 - real / padded if padded else 0.0)
            queue = self.queue_seconds.labels(name)
            for wait in waits:
                queue.observe(wait)

        worker.on_batch = on_batch

    def observe_request(self, model: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(model, route, str(status)).inc()
        self.request_seconds.labels(model, route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
