# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""apiserver_readyz through AnsibleModule against real local HTTPS servers on 127.0.0.1 and ::1.

The servers and the throwaway PKI are the probe tests' own stand-in apiservers (the ``pki`` and ``https_server``
fixtures of tests/unit/conftest.py, from tests/unit/tls_rig.py). Each failure must name the endpoint and why; bad
input must fail naming the value before anything is probed (the servers record every request).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import ProbeSettings, wait_ready
from ansible_collections.kubeha.apiserver.plugins.modules import apiserver_readyz
from tls_rig import PKI, HTTPSServers, closed_port

if TYPE_CHECKING:
    from .conftest import ModuleRunner

MODULE = apiserver_readyz  # what conftest.py's run_module runs


def args(pki: PKI, *endpoints: object, **more: Any) -> dict[str, Any]:
    return {"endpoints": [str(e) for e in endpoints], "ca_file": str(pki.ca.path), "timeout": 2} | more


def test_all_ready_over_ipv4_and_ipv6(run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers) -> None:
    v4, v6 = https_server(), https_server(host="::1")
    assert str(v6) == f"[::1]:{v6.port}"
    result = run_module(args(pki, v4, v6))
    assert not result.get("failed"), result
    assert result["changed"] is False
    assert result["ready"] == [str(v4), str(v6)] and result["not_ready"] == []
    assert [(p["endpoint"], p["ready"], p["reason"], p["attempts"]) for p in result["probes"]] == [
        (str(v4), True, "", 1),
        (str(v6), True, "", 1),
    ]
    assert all(0 <= p["elapsed"] < 2 for p in result["probes"])
    assert https_server.paths(v4) == ["/readyz"] and https_server.paths(v6) == ["/readyz"]


def test_one_refused_fails_naming_it(run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers) -> None:
    good, gone = https_server(), closed_port()
    result = run_module(args(pki, good, gone))
    assert result["failed"] is True
    assert result["msg"] == f"{gone} does not answer /readyz: connection refused"
    assert result["ready"] == [str(good)] and result["not_ready"] == [str(gone)]
    assert result["probes"][1] == result["probes"][1] | {"endpoint": str(gone), "ready": False}


def test_require_any_is_met_by_one(run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers) -> None:
    gone, good = closed_port(), https_server(host="::1")
    result = run_module(args(pki, gone, good, require="any"))
    assert not result.get("failed"), result
    assert result["ready"] == [str(good)] and result["not_ready"] == [str(gone)]
    # Negative control: none of them ready.
    other = closed_port("::1")
    failed = run_module(args(pki, gone, other, require="any"))
    assert failed["failed"] is True
    assert failed["msg"] == (
        f"none of {gone}, {other} answers /readyz: {gone}: connection refused; {other}: connection refused"
    )


def test_a_server_that_becomes_ready_during_the_wait(
    run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers
) -> None:
    starting = [(503, b"[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n")] * 2 + [(200, b"ok")]
    backend = https_server(answers=starting)
    result = run_module(args(pki, backend, wait=10, interval=0.2))
    assert not result.get("failed"), result
    assert result["probes"][0]["attempts"] == 3 and result["ready"] == [str(backend)]
    assert https_server.paths(backend) == ["/readyz"] * 3  # ready once: not probed again
    # Negative control: without a wait, the one probe sees it starting.
    again = https_server(answers=starting)
    once = run_module(args(pki, again))
    assert once["msg"] == f"{again} does not answer /readyz: HTTP 503: [-]etcd failed: reason withheld"
    assert https_server.paths(again) == ["/readyz"]


def test_the_wait_is_bounded_and_named(run_module: ModuleRunner, pki: PKI) -> None:
    gone = closed_port()
    start = time.monotonic()
    result = run_module(args(pki, gone, wait=1, interval=0.25))
    took = time.monotonic() - start
    assert 1 <= took < 1 + 2, took
    assert result["msg"] == f"{gone} does not answer /readyz: connection refused (after 1 s)"
    assert result["probes"][0]["attempts"] >= 4


def test_another_ca_is_not_ready_with_a_tls_reason(
    run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers
) -> None:
    backend = https_server()
    result = run_module(args(pki, backend) | {"ca_file": str(pki.other_ca.path)})
    assert result["failed"] is True and result["not_ready"] == [str(backend)]
    assert result["msg"].startswith(f"{backend} does not answer /readyz: TLS certificate not trusted"), result["msg"]
    # A certificate of the right CA for another address is refused too (the IP SAN is checked).
    elsewhere = https_server(issued=pki.wrong_san)
    wrong = run_module(args(pki, elsewhere))
    assert wrong["msg"].startswith(f"{elsewhere} does not answer /readyz: TLS certificate not trusted"), wrong
    assert "IP address mismatch" in wrong["msg"]


def test_a_client_certificate_required_by_the_server(
    run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers
) -> None:
    backend = https_server(require_client=True)
    client = {"client_cert_file": str(pki.client.cert), "client_key_file": str(pki.client.key)}
    result = run_module(args(pki, backend, **client))
    assert not result.get("failed"), result
    # Negative control: anonymous, the server refuses the handshake.
    anonymous = run_module(args(pki, backend))
    assert anonymous["failed"] is True and anonymous["not_ready"] == [str(backend)]
    assert anonymous["msg"].startswith(f"{backend} does not answer /readyz: "), anonymous["msg"]


def test_a_certificate_and_key_in_one_file(
    run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers, tmp_path: Path
) -> None:
    """As kubeconfig_client_cert writes embedded credentials (and the guard's configuration then has no key file)."""
    backend = https_server(require_client=True)
    both = tmp_path / "client.pem"
    both.write_bytes(pki.client.cert.read_bytes() + pki.client.key.read_bytes())
    result = run_module(args(pki, backend, client_cert_file=str(both)))
    assert not result.get("failed"), result


def test_server_name_verifies_a_vip_as_kubernetes(
    run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers
) -> None:
    vip = https_server(issued=pki.named)  # names "kubernetes", no IP address
    result = run_module(args(pki, vip, server_name="kubernetes"))
    assert not result.get("failed"), result
    by_address = run_module(args(pki, vip))
    assert by_address["failed"] is True and "TLS certificate not trusted" in by_address["msg"]


def test_check_mode_probes_too(run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers) -> None:
    backend = https_server()
    result = run_module(args(pki, backend), check_mode=True)
    assert not result.get("failed") and result["changed"] is False and result["ready"] == [str(backend)]
    assert https_server.paths(backend) == ["/readyz"]


def test_an_empty_list_needs_no_probe_for_all_and_is_refused_for_any(run_module: ModuleRunner, pki: PKI) -> None:
    result = run_module(args(pki))
    assert not result.get("failed") and result["probes"] == [] and result["ready"] == []
    refused = run_module(args(pki, require="any"))
    assert refused == refused | {"failed": True, "msg": "endpoints is empty: require=any needs at least one endpoint"}


BAD_INPUTS = {
    "malformed endpoint": ({"endpoints": ["10.0.0.1"]}, "endpoints: '10.0.0.1' is not ADDRESS:PORT"),
    "IPv6 without brackets": ({"endpoints": ["fd00::1:6443"]}, "endpoints: 'fd00::1:6443': write an IPv6 address"),
    "a name": ({"endpoints": ["master-1:6443"]}, "endpoints: 'master-1:6443': 'master-1' is not an IP address"),
    "missing CA file": ({"ca_file": "{tmp}/nowhere/ca.crt"}, "cannot read the CA file {tmp}/nowhere/ca.crt"),
    "CA file not a certificate": ({"ca_file": "{tmp}/junk.pem"}, "the CA file {tmp}/junk.pem is not a valid PEM"),
    "certificate without key": (
        {"client_cert_file": "{client}"},
        "client_cert_file {client} holds no private key and client_key_file is not given",
    ),
    "key without certificate": (
        {"client_key_file": "{key}"},
        "client_key_file {key} is given without client_cert_file",
    ),
    "missing key file": (
        {"client_cert_file": "{client}", "client_key_file": "{tmp}/none.key"},
        "cannot load the client certificate {client} and key {tmp}/none.key",
    ),
    "no time for a probe": ({"timeout": 0}, "timeout 0.0 is not a number of seconds > 0"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_naming_the_value_and_probes_nothing(
    run_module: ModuleRunner, pki: PKI, https_server: HTTPSServers, tmp_path: Path, case: str
) -> None:
    backend = https_server()
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    given, expected = BAD_INPUTS[case]
    names = {"tmp": str(tmp_path), "client": str(pki.client.cert), "key": str(pki.client.key)}
    given = {k: v.format(**names) if isinstance(v, str) else v for k, v in given.items()}
    result = run_module(args(pki, backend) | given)
    assert result["failed"] is True
    assert result["msg"].startswith(expected.format(**names)), result["msg"]
    assert "Traceback" not in json.dumps(result) and "exception" not in result
    assert "probes" not in result
    assert https_server.paths(backend) == []  # nothing was probed


def test_every_malformed_endpoint_is_named_at_once(run_module: ModuleRunner, pki: PKI) -> None:
    result = run_module(args(pki, "10.0.0.1:6443", "x", "10.0.0.2:99999"))
    assert result["msg"] == (
        "endpoints: 'x' is not ADDRESS:PORT (an IPv6 address as [ADDRESS]:PORT); "
        "'10.0.0.2:99999': port '99999' is not 1-65535"
    )


def test_wait_ready_probes_only_the_backends_not_ready_yet(pki: PKI, https_server: HTTPSServers) -> None:
    ready = https_server()
    starting = https_server(answers=[(503, b"")] * 3 + [(200, b"ok")])
    settings = ProbeSettings(ca_file=str(pki.ca.path), timeout_s=2.0)
    waited = wait_ready([starting, ready], settings, wait_s=10, interval_s=0.1)
    assert waited.satisfied and waited.attempts == {ready: 1, starting: 4}
    assert set(waited.ready()) == {ready, starting} and waited.not_ready() == []
    assert https_server.paths(ready) == ["/readyz"]
    with pytest.raises(ValueError, match="require must be one of all, any"):
        wait_ready([ready], settings, 0, require="most")
