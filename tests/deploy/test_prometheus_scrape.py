"""A real Prometheus (Debian's package) on loopback scrapes a real ninefold server.

On a freshly started server that has answered nothing, every Grafana panel and Prometheus Adapter
query must already return a sample (0 allowed: a healthy model's failure series exist from load on).
After a few real requests, Prometheus's HTTP API must answer a `histogram_quantile` of ninefold's
latency and the request rate with values; every panel and adapter query must return data (GPU ones
only parse: no GPU here); the batch-size panels must read 1 when every batch held one item; the
alert rules must load and evaluate without error, and the client-error alert alone may react (the
test's only failures are a client's: one unreadable image and one request over the image limit in
every ten), never the critical server-fault one.
Waits are bounded polls (scrapes every second), not timed assertions.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from clients.client import VisionClient
from clients.errors import VisionError
from clients.server_process import ServerProcess, free_ports
from serving.errors import FAILURE_REASONS
from tests.deploy.deploy_support import K8S, MAX_IMAGES, prometheus_rule_groups
from tests.serving.conftest import start_server
from tests.serving.tiny_repository import write_tiny_repository

pytestmark = pytest.mark.slow

SCRAPE_LABELS = {"namespace": "deploy-test", "pod": "ninefold-0"}
"""What the Prometheus Operator attaches to every series; the adapter rules and alerts group by them."""
WAIT_S = 90.0
RATE_WINDOW = "2m"  # long enough that the traffic stays in the window on a slow machine
GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
"""Exported only where NVML finds a GPU."""


@dataclass(frozen=True)
class Prometheus:
    url: str
    log_path: Path

    def query(self, expression: str) -> dict:
        """Instant query through /api/v1/query; fails the test on a PromQL error, with Prometheus's message."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            pytest.fail(f"Prometheus refused {expression!r}: {error.read().decode()}")
        assert body["status"] == "success", body
        return body["data"]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.load(response)["data"]

    def values(self, expression: str) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(expression)["result"]]

    def wait_for_values(self, expression: str) -> list[float]:
        """Poll until the query returns at least one finite value (bounded by WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            values = [value for value in self.values(expression) if math.isfinite(value)]
            if values:
                return values
            time.sleep(0.5)
        pytest.fail(f"no value for {expression!r} within {WAIT_S} s; log:\n{self.log_path.read_text()[-3000:]}")


def write_prometheus_config(folder: Path, metrics_url: str) -> Path:
    target = urllib.parse.urlsplit(metrics_url)
    rules = folder / "ninefold-rules.yml"
    rules.write_text(yaml.safe_dump(prometheus_rule_groups()))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{
            "job_name": "ninefold",
            "metrics_path": target.path,
            "static_configs": [{"targets": [target.netloc], "labels": SCRAPE_LABELS}],
        }],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def prometheus(prometheus_binary: str, promtool: str, ninefold_server: ServerProcess,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping the session's server (which the `traffic` fixture sends requests)."""
    yield from run_prometheus(prometheus_binary, promtool, ninefold_server, tmp_path_factory.mktemp("prometheus"))


@pytest.fixture(scope="module")
def quiet_prometheus(prometheus_binary: str, promtool: str,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping a server of its own that no test sends a request."""
    server = start_server(write_tiny_repository(tmp_path_factory.mktemp("quiet-repository")))
    try:
        yield from run_prometheus(prometheus_binary, promtool, server, tmp_path_factory.mktemp("quiet-prometheus"))
    finally:
        assert server.stop() == 0, server.log()


def run_prometheus(prometheus_binary: str, promtool: str, ninefold_server: ServerProcess,
                   folder: Path) -> Iterator[Prometheus]:
    """A real Prometheus on loopback scraping `ninefold_server` every second, stopped afterwards."""
    config = write_prometheus_config(folder, ninefold_server.metrics_url)
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    address = f"127.0.0.1:{free_ports(1)[0]}"
    log_path = folder / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address={address}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://{address}", log_path)
    try:
        wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(server: Prometheus, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{server.log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"prometheus not ready within {WAIT_S} s:\n{server.log_path.read_text()}")


@pytest.fixture(scope="module")
def traffic(prometheus: Prometheus, ninefold_server: ServerProcess) -> None:
    """Real calls after Prometheus's first scrape, spread over several scrapes so that rate() sees
    increases. Per round: eight good one-image classify calls (so every batch holds one item) and two
    a client gets wrong: an unreadable image and one image over the request limit."""
    prometheus.wait_for_values('up{job="ninefold"}')
    rng = np.random.default_rng(0)
    with VisionClient(ninefold_server.target) as client:
        for _ in range(4):
            for _ in range(8):
                client.classify([rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)], top_k=2)
            with pytest.raises(VisionError, match="INVALID_ARGUMENT"):
                client.classify([b"not an image"])
            with pytest.raises(VisionError, match="RESOURCE_EXHAUSTED"):
                client.classify([np.zeros((8, 8, 3), np.uint8)] * (MAX_IMAGES + 1))
            time.sleep(1.1)


def test_prometheus_answers_latency_quantile_and_request_rate(prometheus: Prometheus, traffic: None) -> None:
    p95 = prometheus.wait_for_values(
        "histogram_quantile(0.95, sum by (le, model) "
        f"(rate(ninefold_request_duration_seconds_bucket[{RATE_WINDOW}])))")
    assert all(0 < value < 60 for value in p95), p95
    rate = prometheus.wait_for_values(f"sum(rate(nv_inference_request_success[{RATE_WINDOW}]))")
    assert rate[0] > 0


def dashboard_targets() -> list[tuple[str, dict]]:
    """(panel title, target) of every query of the Grafana dashboard."""
    dashboard = json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())
    return [(panel["title"], target) for panel in dashboard["panels"] for target in panel["targets"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    return [(title, target["expr"]) for title, target in dashboard_targets()]


def as_prometheus_query(expression: str) -> str:
    """What Grafana sends: its variables replaced ($namespace/$model = All = '.*')."""
    return (expression.replace("$__rate_interval", RATE_WINDOW).replace("$__range", RATE_WINDOW)
            .replace("$namespace", ".*").replace("$model", ".*"))


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b((?:nv|ninefold)_[a-z_]+)\b", expression))


def exported_series_names(server: ServerProcess) -> set[str]:
    """Names of the samples on /metrics (what Prometheus stores; `# TYPE` lines may name families otherwise)."""
    return set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", server.metrics(), re.MULTILINE))


def test_every_dashboard_query_runs_on_what_the_server_exports(
        prometheus: Prometheus, traffic: None, ninefold_server: ServerProcess) -> None:
    exported = exported_series_names(ninefold_server)
    prometheus.wait_for_values(f"sum(rate(nv_inference_count[{RATE_WINDOW}]))")
    prometheus.wait_for_values(f"sum(rate(nv_inference_request_failure[{RATE_WINDOW}]))")
    for title, expression in dashboard_expressions():
        names = metric_names(expression)
        assert names, f"panel {title!r} queries no ninefold metric"
        unknown = names - exported - GPU_METRICS
        assert not unknown, f"panel {title!r} uses metrics the server does not export: {unknown}"
        result = prometheus.query(as_prometheus_query(expression))["result"]
        if not names & GPU_METRICS:
            assert result, f"panel {title!r} shows nothing after real traffic: {expression}"


def test_before_any_request_every_panel_and_adapter_query_has_a_sample(quiet_prometheus: Prometheus) -> None:
    """No data would hide a healthy model: every query answers (NaN where a ratio or quantile has no
    requests yet), and every model's failure series reads 0 for every reason."""
    quiet_prometheus.wait_for_values(f"rate(nv_inference_request_success[{RATE_WINDOW}])")  # two scrapes in
    for title, expression in dashboard_expressions():
        if not metric_names(expression) & GPU_METRICS:
            assert quiet_prometheus.query(as_prometheus_query(expression))["result"], (
                f"panel {title!r} shows no data on a healthy idle server: {expression}")
    for name, series, template in adapter_queries():
        if series not in GPU_METRICS:
            result = quiet_prometheus.query(expand_adapter_template(template, series))["result"]
            assert [sample["metric"] for sample in result] == [{"pod": SCRAPE_LABELS["pod"]}], (name, result)
    failures = quiet_prometheus.query("nv_inference_request_failure")["result"]
    models = {sample["metric"]["model"] for sample in quiet_prometheus.query("nv_inference_request_success")["result"]}
    assert {(sample["metric"]["model"], sample["metric"]["reason"]) for sample in failures} == {
        (model, reason) for model in models for reason in FAILURE_REASONS}
    assert {float(sample["value"][1]) for sample in failures} == {0.0}


def test_batch_size_panels_read_one_when_every_batch_holds_one_item(prometheus: Prometheus, traffic: None) -> None:
    """The traffic's classify calls carry one image each: a batch size panel must not read below 1."""
    prometheus.wait_for_values(f"sum(rate(nv_inference_exec_count[{RATE_WINDOW}]))")
    batch_targets = [(title, target) for title, target in dashboard_targets()
                     if metric_names(target["expr"]) & {"ninefold_batch_size_bucket", "nv_inference_exec_count"}]
    assert batch_targets
    for title, target in batch_targets:
        result = prometheus.query(as_prometheus_query(target["expr"]))["result"]
        if target.get("format") == "heatmap":  # cumulative executions per `le`: all of them in le="1"
            executions = {sample["metric"]["le"]: float(sample["value"][1]) for sample in result}
            assert executions["1.0"] == executions["+Inf"] > 0, (title, executions)
        else:
            values = [float(sample["value"][1]) for sample in result
                      if sample["metric"].get("model") == "tiny_classify"]
            assert values == [1.0], (title, target["expr"], values)


def adapter_queries() -> list[tuple[str, str, str]]:
    """(metric name served to the HPA, series, metricsQuery) of each adapter rule."""
    values = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    rules = []
    for rule in values["rules"]["custom"]:
        series = rule["seriesQuery"].split("{", 1)[0]
        rules.append((rule["name"]["as"], series, rule["metricsQuery"]))
    return rules


def expand_adapter_template(template: str, series: str) -> str:
    """The adapter's expansion for a request about pod ninefold-0 in the test namespace."""
    matchers = f'namespace="{SCRAPE_LABELS["namespace"]}",pod=~"{SCRAPE_LABELS["pod"]}"'
    return (template.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", "pod"))


def test_adapter_rules_serve_the_hpa_metrics_per_pod(prometheus: Prometheus, traffic: None) -> None:
    for name, series, template in adapter_queries():
        expression = expand_adapter_template(template, series)
        result = prometheus.query(expression)["result"]
        if series in GPU_METRICS:
            continue  # parses; no GPU here to give it data
        if name == "ninefold_request_p95_seconds":
            prometheus.wait_for_values(expression)
        assert [sample["metric"] for sample in result] == [{"pod": SCRAPE_LABELS["pod"]}], (name, result)


def wait_for_alerts(prometheus: Prometheus) -> list[dict]:
    """Active alerts once every rule has been evaluated and some alert is active (bounded by WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        rules = [rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]]
        alerts = prometheus.get("/api/v1/alerts")["alerts"]
        if rules and all(rule["lastEvaluation"].startswith("20") for rule in rules) and alerts:
            return alerts
        time.sleep(0.5)
    pytest.fail(f"no alert became active within {WAIT_S} s")


def test_alert_rules_evaluate_and_only_the_client_error_alert_reacts(prometheus: Prometheus, traffic: None) -> None:
    """Two requests in ten were the client's mistakes: NinefoldHighClientErrorRatio (> 10%) turns
    pending for the tiny classifier, and nothing else on this otherwise healthy server (all models
    ready, target up): above all not the critical NinefoldHighServerErrorRatio."""
    alerts = wait_for_alerts(prometheus)
    rules = [rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    assert len(rules) == sum(len(group["rules"]) for group in prometheus_rule_groups()["groups"])
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    assert [(alert["labels"]["alertname"], alert["labels"]["model"], alert["state"]) for alert in alerts] == [
        ("NinefoldHighClientErrorRatio", "tiny_classify", "pending")]
    assert alerts[0]["labels"]["namespace"] == SCRAPE_LABELS["namespace"]
