"""Deployment files under scripts/deploy/: the Kubernetes manifests, the Grafana dashboard, the
systemd unit and the Dockerfile are parsed and checked for what they must carry, and every
metric they read is checked against what a live quiver actually exports."""
import json
import pathlib
import re
import subprocess

import pytest
import yaml

from test_server import Server

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "deploy"


def docs(name):
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


def one(name, kind):
    found = [d for d in docs(name) if d["kind"] == kind]
    assert len(found) == 1, f"{name}: expected one {kind}"
    return found[0]


@pytest.fixture(scope="module")
def exported(quiver_bin):
    """Metric family names a live quiver exports (from its # TYPE lines)."""
    s = Server(quiver_bin, [])
    try:
        s.client().completions.create(model="quiver-tiny", prompt="a", max_tokens=2)
        _, body = s.get("/metrics")
    finally:
        s.stop()
    return set(re.findall(r"^# TYPE (\S+) ", body.decode(), re.M))


def quiver_container():
    dep = one("deployment.yaml", "Deployment")
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "quiver"]
    return dep, c


def test_deployment(quiver_bin):
    dep, c = quiver_container()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == 8000
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        g = c[probe]["httpGet"]
        assert g["path"] == "/health" and ports[g["port"]] == 8000, probe
    assert "--open-path=/metrics" in c["args"] and "--port=8000" in c["args"]
    # The arguments are ones quiver accepts: loading fails here (no /models, no GPU), but not
    # as a usage error.
    r = subprocess.run([quiver_bin, "serve", *c["args"], "--port=0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "unknown option" not in r.stderr, r.stderr
    # The grace period covers the drain.
    drain = int(next(a for a in c["args"] if a.startswith("--drain-timeout=")).split("=")[1])
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_service_and_podmonitor():
    dep, c = quiver_container()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = one("service.yaml", "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in c["ports"]}
    pm = one("podmonitor.yaml", "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ep = pm["spec"]["podMetricsEndpoints"][0]
    assert ep["path"] == "/metrics" and ep["port"] in {p["name"] for p in c["ports"]}


def test_inference_pool(exported):
    dep, c = quiver_container()
    pool = one("inferencepool.yaml", "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [8000]
    ref = pool["spec"]["endpointPickerRef"]
    epp_svc = [d for d in docs("inferencepool.yaml") if d["kind"] == "Service"][0]
    assert ref["name"] == epp_svc["metadata"]["name"] and ref["port"]["number"] == epp_svc["spec"]["ports"][0]["port"]
    epp = [d for d in docs("inferencepool.yaml") if d["kind"] == "Deployment"][0]
    args = dict(a[2:].split("=", 1) for a in epp["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args["pool-name"] == pool["metadata"]["name"]
    assert int(args["grpc-port"]) == ref["port"]["number"]
    for flag in ("total-queued-requests-metric", "total-running-requests-metric", "kv-cache-usage-percentage-metric"):
        assert args[flag] in exported, f"{flag}={args[flag]} is not a metric quiver exports"


def test_grafana_dashboard(exported):
    d = json.loads((DEPLOY / "grafana" / "quiver-dashboard.json").read_text())
    assert d["uid"] and d["title"] and d["panels"]
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    exprs.append(next(v for v in d["templating"]["list"] if v["name"] == "model_name")["definition"])
    used = set()
    for e in exprs:
        for m in re.findall(r"\b((?:vllm:|quiver_)[a-z0-9_:]+)", e):
            used.add(re.sub(r"_(bucket|sum|count)$", "", m))
    missing = used - exported
    assert not missing, f"dashboard reads metrics quiver does not export: {missing}"
    titles = " | ".join(p["title"].lower() for p in d["panels"])
    for topic in ("requests", "first token", "inter-token", "end-to-end", "tokens / s", "kv cache", "waiting",
                  "preemptions", "queue"):
        assert topic in titles, topic
    # Percentiles of the latency histograms, per model.
    assert sum("histogram_quantile(0.99" in e for e in exprs) >= 3
    assert all("model_name" in e or "model=" in e for e in exprs)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_systemd_unit_and_dockerfile():
    unit = (DEPLOY / "quiver.service").read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert keys["ExecStart"] == "/usr/bin/quiver serve --config /etc/quiver/config.json"
    assert keys["User"] == "quiver" and keys["NoNewPrivileges"] == "yes" and keys["ProtectSystem"] == "strict"
    assert keys["WantedBy"] == "multi-user.target"
    cfg = json.loads((DEPLOY / "config.example.json").read_text())
    assert cfg["models"] and "/metrics" in cfg["open_paths"]
    df = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", df, re.M)
    assert "debian:bookworm-slim" in froms
    assert any(f.startswith("nvidia/cuda:") and f.endswith("-runtime-${CUDA_OS}") for f in froms)
    assert "./scripts/setup --build-only" in df and "./scripts/build release" in df
    assert 'ENTRYPOINT ["/usr/bin/quiver", "serve"]' in df and re.search(r"^USER quiver$", df, re.M)
