# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The example Prometheus files under examples/prometheus, checked by promtool itself (built by
scripts/build_promtool.sh, cached): the rules load, a configuration with the scrape job and the rules loads,
the rules' unit tests pass, and a broken alert makes them fail. promtool also lints the guard's real metrics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    build = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_promtool.sh")], capture_output=True, text=True, check=False
    )
    assert build.returncode == 0, build.stderr
    path = build.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), path
    return path


def run(promtool: str, *args: str, stdin: str | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], input=stdin, capture_output=True, text=True, cwd=cwd, check=False, timeout=300
    )


def test_the_alert_rules_load(promtool: str) -> None:
    res = run(promtool, "check", "rules", "examples/prometheus/alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 5 rules found" in res.stdout


def test_a_configuration_with_the_scrape_job_and_the_rules_loads(promtool: str, tmp_path: Path) -> None:
    res = run(promtool, "check", "config", "examples/prometheus/scrape.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    config = yaml.safe_load((EXAMPLES / "scrape.yml").read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "30s", "evaluation_interval": "30s"}
    config["rule_files"] = [str(EXAMPLES / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    res = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 5 rules found" in res.stdout


def test_the_rules_unit_tests_pass(promtool: str) -> None:
    res = run(promtool, "test", "rules", "examples/prometheus/alerts_test.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


BREAKAGES = [
    ("KubehaApiserverGuardDown", 'up{job="kubeha-apiserver-guard"} == 0', 'up{job="kubeha-apiserver-guard"} == 2'),
    ("KubehaApiserverBackendDown", "for: 3m", "for: 1m"),
    ("KubehaApiserverAllBackendsDown", "max without (backend)", "min without (backend)"),
    ("KubehaApiserverGuardLoopStale", "_timestamp_seconds > 60\n", "_timestamp_seconds > 600\n"),
    ("KubehaApiserverApplyErrors", "apply_errors_total[2m]) > 0", "apply_errors_total[10m]) > 0"),
]  # fmt: skip


@pytest.mark.parametrize(("alert", "old", "new"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_a_broken_alert_fails_the_rules_unit_tests(
    promtool: str, tmp_path: Path, alert: str, old: str, new: str
) -> None:
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    intact = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    rules = (tmp_path / "alerts.yml").read_text(encoding="utf-8")
    section = rules.index(f"- alert: {alert}\n")
    end = rules.find("- alert:", section + 1)
    end = len(rules) if end < 0 else end
    assert rules[section:end].count(old) == 1
    broken = rules[:section] + rules[section:end].replace(old, new) + rules[end:]
    (tmp_path / "alerts.yml").write_text(broken, encoding="utf-8")
    assert run(promtool, "check", "rules", "alerts.yml", cwd=tmp_path).returncode == 0  # still valid rules
    res = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert res.returncode != 0
    assert f"alertname: {alert}" in res.stdout + res.stderr


def test_promtool_lints_the_guards_metrics_clean(promtool: str, metrics_text: str) -> None:
    res = run(promtool, "check", "metrics", stdin=metrics_text)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout + res.stderr == ""
    res = run(promtool, "check", "metrics", stdin=metrics_text.replace("apply_errors_total", "apply_errors"))
    assert res.returncode != 0
    assert 'kubeha_apiserver_apply_errors counter metrics should have "_total" suffix' in res.stdout + res.stderr
