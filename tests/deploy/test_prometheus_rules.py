"""Alert rules: `promtool check rules` accepts them and `promtool test rules` shows each alert fires
on the situation it names (tests/deploy/alert_cases.yml) and not on a healthy server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.deploy_support import prometheus_rule_groups

CASES = Path(__file__).with_name("alert_cases.yml")


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "ninefold-rules.yml"
    rules.write_text(yaml.safe_dump(prometheus_rule_groups()))
    result = run([promtool, "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


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
