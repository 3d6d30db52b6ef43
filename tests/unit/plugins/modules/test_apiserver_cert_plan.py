# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The apiserver_cert_plan module's main() through AnsibleModule."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from ansible_collections.kubeha.apiserver.plugins.modules import apiserver_cert_plan

if TYPE_CHECKING:
    from .conftest import ModuleRunner

MODULE = apiserver_cert_plan  # what conftest.py's run_module runs

CERT = {
    "subject_ordered": [["commonName", "kube-apiserver"]],
    "subject_alt_name": ["DNS:cp1", "IP:10.88.0.11"],
    "key_usage": ["Digital Signature", "Key Encipherment"],
    "key_usage_critical": True,
    "extended_key_usage": ["TLS Web Server Authentication"],
    "basic_constraints": ["CA:FALSE"],
    "basic_constraints_critical": True,
    "extensions_by_oid": {"2.5.29.15": {}, "2.5.29.17": {}, "2.5.29.19": {}, "2.5.29.37": {}},
    "not_before": "20261126152212Z",
    "not_after": "20271126152712Z",
    "signature_algorithm": "sha256WithRSAEncryption",
}


def test_plans_the_missing_vips_and_changes_nothing(run_module: ModuleRunner) -> None:
    result = run_module({"sans": ["169.254.100.1", "IP:10.88.0.11"], "certificate": CERT, "label": "cp1"})
    assert result["changed"] is False and result["needs_new"] is True
    assert result["wanted"] == ["IP:169.254.100.1", "IP:10.88.0.11"] and result["missing"] == ["IP:169.254.100.1"]
    assert result["csr"]["subject_alt_name"] == ["DNS:cp1", "IP:10.88.0.11", "IP:169.254.100.1"]


def test_check_mode_predicts_the_same(run_module: ModuleRunner) -> None:
    result = run_module({"sans": ["169.254.100.1"], "certificate": CERT}, check_mode=True)
    assert result["missing"] == ["IP:169.254.100.1"] and result["changed"] is False


def test_a_bad_name_fails_naming_host_value_and_reason(run_module: ModuleRunner) -> None:
    result = run_module({"sans": ["169.254.100.1", "IP:300.1.1.1"], "label": "cp2"})
    assert result["failed"] is True
    assert result["msg"] == "cp2: SAN 'IP:300.1.1.1': '300.1.1.1' is not a valid IPv4 or IPv6 address"


def test_absent_warns_when_someone_replaced_the_certificate(
    run_module: ModuleRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recorded at the source: where warnings end up depends on what else the test process has imported.
    warned: list[str] = []
    monkeypatch.setattr(apiserver_cert_plan.AnsibleModule, "warn", lambda self, msg: warned.append(msg))
    args = {"state": "absent", "current_checksum": "c", "original_checksum": "o", "issued_checksum": "i"}
    result = run_module(args | {"label": "cp3"})
    assert result["action"] == "leave" and result["changed"] is False
    assert len(warned) == 1 and warned[0].startswith("cp3: the certificate was replaced since the role issued it")
    result = run_module(args | {"current_checksum": "i"})
    assert result["action"] == "restore" and len(warned) == 1
