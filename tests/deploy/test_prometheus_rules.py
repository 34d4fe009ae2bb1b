"""Alert rules: `promtool check rules` accepts them and `promtool test rules` shows each alert fires
on the situation it names (tests/deploy/alert_cases.yml) and not on a healthy server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from serving import errors
from serving.errors import CLIENT_REASONS, FAILURE_REASONS
from tests.deploy.deploy_support import K8S, ROOT, prometheus_rule_groups

CASES = Path(__file__).with_name("alert_cases.yml")


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "ninefold-rules.yml"
    rules.write_text(yaml.safe_dump(prometheus_rule_groups()))
    result = run([promtool, "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_alerts_fire_when_they_should(promtool: str, tmp_path: Path) -> None:
    groups = prometheus_rule_groups()
    # Annotation templates are checked above; the cases compare labels only, so they are left out here.
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "ninefold-rules.yml"
    rules.write_text(yaml.safe_dump(groups))
    cases = yaml.safe_load(CASES.read_text())
    cases["rule_files"] = [str(rules)]
    case_file = tmp_path / "cases.yml"
    case_file.write_text(yaml.safe_dump(cases))
    result = run([promtool, "test", "rules", str(case_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def client_reason_regexes(text: str) -> set[str]:
    """Every `reason=~"..."` / `reason!~"..."` alternative list in a rule file or dashboard, as a set."""
    return {frozenset(alternatives.split("|")) for alternatives in re.findall(r'reason[=!]~\\?"([^"\\]+)', text)}


def test_failures_are_split_by_the_servers_own_client_reasons() -> None:
    """The rules and the dashboard name exactly serving.errors.CLIENT_REASONS as client errors, and
    every reason a request can fail with is a known one (so the split covers them all)."""
    for path in (K8S / "monitoring" / "prometheus-rule.yaml", K8S / "monitoring" / "grafana-dashboard.json"):
        assert client_reason_regexes(path.read_text()) == {CLIENT_REASONS}, path
    raised = {error.reason for error in all_subclasses(errors.ServingError)}
    assert raised | {errors.CANCELLED} == set(FAILURE_REASONS)
    assert set(FAILURE_REASONS) > CLIENT_REASONS
    assert set(FAILURE_REASONS) - CLIENT_REASONS == {"backend", "unavailable"}


def all_subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))]


def test_metrics_doc_lists_every_reason_with_who_can_fix_it() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (server|client) \|", (ROOT / "docs" / "METRICS.md").read_text(), re.MULTILINE)
    assert sorted(reason for reason, _ in rows) == sorted(FAILURE_REASONS)
    assert {reason for reason, who in rows if who == "client"} == CLIENT_REASONS
