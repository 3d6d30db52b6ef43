"""apiserver_proxy's wait for its VIPs (``_converge.wait_vip_ready``) is the guard's own probe (``_probe.wait_ready``):
the cluster CA, the certificate's name checked against the verify name (``kubernetes``), against real TLS servers on
loopback (the ``pki`` and ``https_server`` fixtures of tests/unit/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._converge import wait_vip_ready
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import parse_config
from guard_rig import config_doc
from tls_rig import closed_port


def config(tmp_path: Path, pki: Any, port: int, **overrides: Any) -> Any:
    doc = config_doc(tmp_path, vip=["127.0.0.1"], port=port, ca_file=str(pki.ca.path), mode="haproxy", **overrides)
    return parse_config(doc)


def test_a_vip_whose_certificate_names_kubernetes_is_ready(tmp_path: Path, pki: Any, https_server: Any) -> None:
    backend = https_server(issued=pki.named)
    assert wait_vip_ready(config(tmp_path, pki, backend.port), 2.0) == {"127.0.0.1": ""}
    assert https_server.paths(backend) == ["/readyz"]


def test_negative_control_a_certificate_without_the_name_is_not_ready(
    tmp_path: Path, pki: Any, https_server: Any
) -> None:
    backend = https_server(issued=pki.server)  # the right CA, IP names only: not `kubernetes`
    status = wait_vip_ready(config(tmp_path, pki, backend.port), 0.0)
    assert status["127.0.0.1"] and "kubernetes" in status["127.0.0.1"], status


def test_a_vip_nothing_answers_says_why_within_its_deadline(tmp_path: Path, pki: Any) -> None:
    status = wait_vip_ready(config(tmp_path, pki, closed_port().port), 1.0)
    assert "refused" in status["127.0.0.1"], status
