# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guard's discovery of the masters (module_utils/_guard_discovery), its client faked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import (
    _guard_discovery,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import (
    GuardError,
    parse_config,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_discovery import (
    ENDPOINTSLICES_PATH,
    backend_set,
    backends_from_endpointslices,
    discover_backends,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import KubeAPIError
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend
from guard_rig import (
    CERT,
    KEY,
    M1,
    M2,
    M4,
    M6,
    RigFactory,
    config_doc,
    rigs,
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RigFactory]:
    yield from rigs(tmp_path)


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


def endpointslice(addresses: dict[str, bool | None], port_name: str = "https", address_type: str = "IPv4") -> dict:
    endpoints = []
    for address, ready in addresses.items():
        endpoint: dict[str, Any] = {"addresses": [address]}
        if ready is not None:
            endpoint["conditions"] = {"ready": ready}
        endpoints.append(endpoint)
    return {
        "addressType": address_type,
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "endpoints": endpoints,
        "ports": [{"name": port_name, "port": 6443, "protocol": "TCP"}],
    }


def test_backends_from_endpointslices() -> None:
    doc = {
        "kind": "EndpointSliceList",
        "items": [
            endpointslice({"10.0.0.11": True, "10.0.0.12": None, "10.0.0.13": False}),
            endpointslice({"fd00::11": True}, address_type="IPv6"),
            endpointslice({"10.0.0.99": True}, port_name=""),  # a single unnamed port is used too
        ],
    }
    assert backends_from_endpointslices(doc) == {M1, M2, M6, Backend("10.0.0.99", 6443)}
    assert backends_from_endpointslices({"items": []}) == frozenset()


def test_backend_set_never_drops_below_the_seeds() -> None:
    assert backend_set([M1, M2], [M4, M1]) == (M1, M2, M4)
    assert backend_set([M1, M2], []) == (M1, M2)


class FakeKubeClient:
    answers: ClassVar[dict[str, Any]] = {}
    opened: ClassVar[list[str]] = []

    def __init__(self, credentials: Any, timeout: float, server_override: str) -> None:
        self.server = server_override
        FakeKubeClient.opened.append(server_override)

    def __enter__(self) -> FakeKubeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return

    def get(self, path: str) -> dict[str, Any]:
        assert path == ENDPOINTSLICES_PATH
        answer = self.answers[self.server]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_discover_backends_asks_the_apiservers_in_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in (("ca.crt", CERT), ("client.pem", CERT + KEY)):
        (tmp_path / name).write_text(text)
    cfg = parse_config(config_doc(tmp_path, client_cert_file=str(tmp_path / "client.pem"), discovery={"enabled": True}))
    monkeypatch.setattr(_guard_discovery, "KubeClient", FakeKubeClient)
    FakeKubeClient.opened = []
    FakeKubeClient.answers = {
        "https://10.0.0.12:6443": KubeAPIError("forbidden: cannot get endpointslices.discovery.k8s.io"),
        "https://10.0.0.11:6443": endpointslice({"10.0.0.11": True, "10.0.0.14": True}),
    }
    assert discover_backends(cfg, [M2, M1]) == {M1, M4}
    assert FakeKubeClient.opened == ["https://10.0.0.12:6443", "https://10.0.0.11:6443"]
    with pytest.raises(GuardError, match=r"discovery failed: 10\.0\.0\.12:6443: forbidden"):
        discover_backends(cfg, [M2])


def test_discovery_credentials_from_the_guards_files(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text(CERT)
    (tmp_path / "client.pem").write_text(CERT + KEY)
    cfg = parse_config(config_doc(tmp_path, client_cert_file=str(tmp_path / "client.pem")))
    credentials = _guard_discovery.discovery_credentials(cfg)
    assert credentials.ca_data == CERT.encode()
    assert credentials.client_cert == credentials.client_key == (CERT + KEY).encode()
