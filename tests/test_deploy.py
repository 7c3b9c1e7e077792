"""What ships in deploy/: alert rules unit-tested with promtool (`make test` installs it), Kubernetes manifests
validated against the Kubernetes JSON schemas (kubernetes-validate, offline), the KServe InferenceService and the
Dockerfile checked against the server they start, the Grafana dashboard's queries, and `peftstd triton`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, peftstd

DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.31"  # the oldest Kubernetes release still maintained upstream at the time of writing


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make test` installs it (Debian's prometheus package)"
    return found


def served_metric_names() -> set[str]:
    """Every series name `peftstd serve` exposes, from its registry: counters as NAME_total, histograms as
    NAME_bucket/_sum/_count."""
    from peftstd.serve.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def queried_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(peftstd_[a-z_]+)", expr))


def serve_args(args: list[str]):
    """The serve settings a container's arguments give, as `peftstd serve` would parse them (flags must exist)."""
    from peftstd.cli import build_parser
    from peftstd.serve.config import load_serve_config

    parsed = build_parser().parse_args(["serve", *args])
    return parsed, load_serve_config(parsed.config, parsed)


def served_routes() -> set[str]:
    from peftstd.serve.app import ServerState, create_app
    from peftstd.serve.config import ServeConfig

    return {route.path for route in create_app(ServerState(ServeConfig(), {}, None)).routes}


def test_alert_rules_fire_and_stay_quiet_under_promtool():
    rules, cases = DEPLOY / "prometheus" / "alerts.yml", DEPLOY / "prometheus" / "alerts_test.yml"
    checked = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", str(cases)], capture_output=True, text=True, cwd=cases.parent)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    config = subprocess.run([promtool(), "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr

    alerts = [rule for group in yaml.safe_load(rules.read_text())["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in alerts}
    assert {"PeftstdHighErrorRate", "PeftstdLatencyP99High", "PeftstdQueueSaturated", "PeftstdRequestsRejected",
            "PeftstdPredictionDrift", "PeftstdNoTraffic", "PeftstdDown"} <= names
    tests = [case for test in yaml.safe_load(cases.read_text())["tests"] for case in test["alert_rule_test"]]
    for name in names:  # each rule shown to fire, and to stay quiet
        assert any(c["alertname"] == name and c["exp_alerts"] for c in tests), f"{name} never fires in alerts_test.yml"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in tests), f"{name} is never shown quiet"
    known = served_metric_names()
    for rule in alerts:
        assert queried_metrics(rule["expr"]) <= known, (rule["alert"], queried_metrics(rule["expr"]) - known)


def test_grafana_dashboard_queries_served_metrics_in_valid_promql(tmp_path):
    dashboard = json.loads((DEPLOY / "grafana" / "peftstd.json").read_text())
    panels = dashboard["panels"]
    assert dashboard["uid"] and len({p["id"] for p in panels}) == len(panels)
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("requests", "latency", "batch", "rejections", "drift"):
        assert topic in titles, topic
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    known = served_metric_names()
    for expr in exprs:
        assert queried_metrics(expr) and queried_metrics(expr) <= known, expr
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["datasource"]["type"] == "prometheus"
    # Grafana's variables replaced by values, every query must parse as PromQL (promtool parses rule expressions)
    concrete = [e.replace("$__rate_interval", "5m").replace("$model", ".*") for e in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(concrete)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run([promtool(), "check", "rules", str(tmp_path / "queries.yml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def manifests(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_manifests_validate_and_match_the_server():
    import kubernetes_validate

    folder = DEPLOY / "kubernetes"
    docs = {doc["kind"]: doc for path in sorted(folder.glob("*.yaml")) for doc in manifests(path)}
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any schema error or unknown field

    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    parsed, cfg = serve_args(["--host", "0.0.0.0", "--port", "8000", *container["args"]])  # the image's ENTRYPOINT flags
    assert cfg.keys is not None and cfg.threads == int(container["resources"]["requests"]["cpu"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[service["spec"]["ports"][0]["targetPort"]] == cfg.port
    routes = served_routes()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in routes and container[probe]["httpGet"]["port"] in ports
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"  # 503 while loading or draining
    assert pod["spec"]["terminationGracePeriodSeconds"] > cfg.drain_timeout_s
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(cfg.keys.parent) in mounts and any(spec.split("=")[-1] in mounts for spec in parsed.exports)

    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [pods_metric] = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    adapter = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])
    assert pods_metric in served_metric_names() and adapter["rules"][0]["name"]["as"] == pods_metric


def test_kserve_inference_service_runs_the_same_server_on_kserve_port():
    import kubernetes_validate

    [service] = manifests(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    predictor = service["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"] and predictor["scaleMetric"] in ("cpu", "memory", "concurrency", "rps")
    # KServe embeds a Kubernetes pod spec in the predictor: its containers and volumes checked as one
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {"containers": predictor["containers"], "volumes": predictor["volumes"]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container" and container["command"] == ["peftstd", "serve"]
    _, cfg = serve_args(container["args"])
    assert cfg.port == 8080 == container["ports"][0]["containerPort"] and cfg.host == "0.0.0.0" and cfg.keys is not None
    routes = served_routes()
    assert {"/v2/health/live", "/v2/health/ready", "/v2/models/{name}/infer"} <= routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready" and container["readinessProbe"]["httpGet"]["port"] == 8080


def test_ray_serve_config_builds_the_app_with_its_autoscaling(exported, tmp_path):
    """deploy/ray/serve.yaml is a valid Ray Serve config whose import path builds our app from its args (the same
    builder `peftstd serve --engine ray` uses), its settings peftstd's and its autoscaling theirs."""
    from ray.serve.schema import ServeDeploySchema

    from peftstd.serve.ray_engine import build

    config = yaml.safe_load((DEPLOY / "ray" / "serve.yaml").read_text())
    ServeDeploySchema.parse_obj(config)  # Ray's own schema of the file `serve run` and `serve deploy` take
    [app] = config["applications"]
    module, _, function = app["import_path"].partition(":")
    assert getattr(__import__(module, fromlist=[function]), function) is build
    keys = tmp_path / "keys.json"
    assert peftstd("serve", "keys", "add", "ops", "--keys", str(keys)).returncode == 0
    args = {"exports": [f"sentiment={exported}"], "config": {**app["args"]["config"], "keys": str(keys)}}
    built = build(args)._bound_deployment
    settings, exports = built.init_args
    assert exports == {"sentiment": str(exported.absolute())} and settings["host"] == "0.0.0.0" and settings["threads"] == 1
    scaling = built._deployment_config.autoscaling_config
    wanted = app["args"]["config"]
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (
        wanted["min_replicas"], wanted["max_replicas"], wanted["target_ongoing_requests"])
    assert built._deployment_config.max_ongoing_requests == wanted["max_ongoing_requests"]
    assert built.ray_actor_options["num_cpus"] == wanted["replica_cpus"]


def strict(schema: dict) -> dict:
    """A CRD schema as the API server's strict field validation (kubectl's default) applies it: an object lists
    its fields, and an unknown one is refused unless the schema keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [strict(value) for value in schema]
    return schema


def test_kuberay_rayservice_validates_and_runs_the_same_serve_config():
    """deploy/ray/rayservice.yaml against KubeRay's RayService CRD schema (v1.7.0, stored in tests/schemas), with the
    Serve config of serve.yaml and the Ray version the project pins."""
    import gzip

    import jsonschema
    import ray

    schema = strict(json.loads(gzip.decompress((REPO / "tests" / "schemas" / "kuberay-rayservice-v1.json.gz").read_bytes())))
    [service] = manifests(DEPLOY / "ray" / "rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    jsonschema.validate(service, schema)
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load((DEPLOY / "ray" / "serve.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__ and f"ray=={ray.__version__}" in (REPO / "constraints.txt").read_text()
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        [container] = group["template"]["spec"]["containers"]
        ports = {port["containerPort"] for port in container["ports"]}
        assert {8000, int(group["rayStartParams"]["metrics-export-port"])} <= ports
        mounted = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert {"/models/sentiment", "/etc/peftstd"} <= mounted  # the exports and keys the serve config names
    with pytest.raises(jsonschema.ValidationError):  # the schema has teeth: a misspelt key is refused
        jsonschema.validate({**service, "spec": {**service["spec"], "rayClusterConfg": {}}}, schema)


def test_dockerfile_installs_what_the_makefile_does_and_starts_the_server():
    """Checked on paper: no Docker engine runs on these machines (`docker build` needs one)."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in re.sub(r"\\\n\s*", " ", text).splitlines() if line and not line.startswith("#")]
    kinds = [kind for kind, _ in instructions]
    assert kinds[0] == "FROM" and instructions[0][1].startswith("python:3.11")
    torch_pin = re.search(r"torch==[\d.]+", (REPO / "Makefile").read_text()).group(0)
    assert torch_pin in text and "-c constraints.txt" in text
    for kind, rest in instructions:
        if kind == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (REPO / source).exists(), source
    entrypoint = json.loads(dict(instructions)["ENTRYPOINT"])
    command = json.loads(dict(instructions)["CMD"])
    assert entrypoint[:2] == ["peftstd", "serve"]
    _, cfg = serve_args(entrypoint[2:] + command)
    assert f"EXPOSE {cfg.port}" in text and cfg.keys is not None  # 0.0.0.0 needs keys, or the server refuses to start
    health = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", dict(instructions)["HEALTHCHECK"])
    assert int(health.group(1)) == cfg.port and health.group(2) in served_routes()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "runs"} <= set(ignored)


def pbtxt_tensors(text: str, section: str) -> list[dict]:
    body = re.search(rf"^{section} \[\n(.*?)^\]", text, re.DOTALL | re.MULTILINE).group(1)
    return [{"name": re.search(r'name: "([^"]+)"', block).group(1), "data_type": re.search(r"data_type: (\w+)", block).group(1),
             "dims": [int(d) for d in re.search(r"dims: \[([^\]]*)\]", block).group(1).split(",")]}
            for block in re.findall(r"\{(.*?)\}", body, re.DOTALL)]


def test_triton_repository_matches_the_onnx_model(exported, tmp_path):
    import onnx
    import onnxruntime as ort

    result = peftstd("triton", str(exported), "--out", str(tmp_path), "--name", "sentiment", "--instances", "2")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "model_repository" / "sentiment"
    config = (folder / "config.pbtxt").read_text()
    assert 'name: "sentiment"' in config and 'backend: "onnxruntime"' in config and "max_batch_size: 32" in config
    assert re.search(r"dynamic_batching \{\s*max_queue_delay_microseconds: 500\s*\}", config)
    assert re.search(r"instance_group \[\s*\{\s*count: 2\s*kind: KIND_CPU", config)
    model = onnx.load(str(folder / "1" / "model.onnx"))
    kinds = {7: "TYPE_INT64", 1: "TYPE_FP32"}
    for section, values in (("input", model.graph.input), ("output", model.graph.output)):
        expected = [{"name": v.name, "data_type": kinds[v.type.tensor_type.elem_type],
                     "dims": [d.dim_value or -1 for d in v.type.tensor_type.shape.dim][1:]} for v in values]
        assert pbtxt_tensors(config, section) == expected
    labels = json.loads((exported / "labels.json").read_text())
    assert (folder / "labels.txt").read_text().split() == labels and 'label_filename: "labels.txt"' in config

    # the repository's model answers a batch shaped as the config says, and the tokenizer beside it feeds it
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizers" / "sentiment")
    feed = tokenizer(["a great and moving film", "dull"], padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = [t["name"] for t in pbtxt_tensors(config, "input")]
    [logits] = session.run(None, {name: feed[name].astype(np.int64) for name in inputs})
    assert logits.shape == (2, *pbtxt_tensors(config, "output")[0]["dims"]) == (2, len(labels))
    export = json.loads((exported / "export.json").read_text())
    shipped = {a["artifact"]: a["file"] for a in export["gate"]["artifacts"] if a["passed"]}
    assert (folder / "1" / "model.onnx").read_bytes() == (exported / shipped["int8-static"]).read_bytes()  # batchable int8 first

    refused = peftstd("triton", str(exported), "--out", str(tmp_path / "x"), "--artifact", "int8-dynamic")
    assert refused.returncode == 2 and "batch" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["bad name", "x/y"])
def test_triton_refuses_bad_model_names(exported, tmp_path, name):
    refused = peftstd("triton", str(exported), "--out", str(tmp_path), "--name", name)
    assert refused.returncode == 2 and "model name" in refused.stderr and not (tmp_path / "model_repository").exists()
