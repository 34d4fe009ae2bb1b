"""The client's round_robin policy spreads calls over every address of its target (what a
Kubernetes headless Service gives it), measured on two real servers' own /metrics."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from clients import VisionClient
from clients.server_process import ServerProcess

CALLS = 20


def successes(server: ServerProcess, model: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if family.name == "nv_inference_request_success"
        and not sample.name.endswith("_created")
        and sample.labels.get("model") == model
    )


def test_calls_rotate_over_every_address(tiny_server: ServerProcess, tiny_repository: Path, tmp_path: Path) -> None:
    with ServerProcess.start(tiny_repository, log=tmp_path / "second.log") as second:
        before = successes(tiny_server, "tiny_classify")
        # Two addresses behind one target, as DNS answers for a headless Service with two pods.
        with VisionClient(f"ipv4:{tiny_server.target},{second.target}") as client:
            client.wait_until_ready(timeout=30)
            for _ in range(CALLS):
                client.classify(np.zeros((4, 4, 3), np.uint8))
        first_share = successes(tiny_server, "tiny_classify") - before
        second_share = successes(second, "tiny_classify")
    assert first_share + second_share == CALLS
    assert first_share > 0 and second_share > 0, (first_share, second_share)


def test_dns_scheme_target_resolves_and_answers(tiny_server: ServerProcess) -> None:
    port = tiny_server.target.rsplit(":", 1)[1]
    with VisionClient(f"dns:///localhost:{port}") as client:
        assert client.classify(np.zeros((4, 4, 3), np.uint8)).model.name == "tiny_classify"
