# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The ipvs_service module's main() through AnsibleModule, with a fake kernel adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import _ipvs
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs import MissingLibraryError
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import Action, RealServer, Service
from ansible_collections.kubeha.apiserver.plugins.modules import ipvs_service
from fake_ipvs import FakeIPVSAdapter

if TYPE_CHECKING:
    from .conftest import ModuleRunner

MODULE = ipvs_service  # what conftest.py's run_module runs

VIP = "169.254.100.1"
ARGS = {
    "address": VIP,
    "port": 6443,
    "real_servers": [
        {"address": "10.0.0.1", "port": 6443},
        {"address": "10.0.0.2", "port": 6443, "weight": 3},
    ],
}


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """ip_vs loaded, modprobe never run for real, and a fake adapter in place of pyroute2."""
    env: dict[str, Any] = {"adapter": FakeIPVSAdapter(), "modprobe": []}
    monkeypatch.setattr(_ipvs, "ipvs_loaded", lambda proc_root="/proc": True)

    def fake_load(scheduler: str, run_command: Any, **kwargs: Any) -> list[str]:
        env["modprobe"].append(scheduler)
        return []

    monkeypatch.setattr(_ipvs, "load_kernel_modules", fake_load)
    monkeypatch.setattr(ipvs_service, "make_adapter", lambda: env["adapter"])
    return env


def test_creates_the_service(kernel: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module(ARGS)
    assert result["changed"] is True
    assert [a.kind for a in kernel["adapter"].applied] == ["add_service", "add_dest", "add_dest"]
    assert result["actions"][0] == f"add service TCP {VIP}:6443 (scheduler rr, persistence off)"
    assert result["service"]["real_servers"][1] == {
        "address": "10.0.0.2",
        "port": 6443,
        "weight": 3,
        "forwarding": "masquerade",
        "active_connections": 0,
        "inactive_connections": 0,
    }
    assert kernel["modprobe"] == ["rr"]
    assert "diff" not in result


def test_second_run_is_unchanged(kernel: dict[str, Any], run_module: ModuleRunner) -> None:
    run_module(ARGS)
    kernel["adapter"].applied.clear()
    result = run_module(ARGS)
    assert result["changed"] is False
    assert result["actions"] == []
    assert kernel["adapter"].applied == []


def test_check_mode_applies_nothing_and_reports_changed(kernel: dict[str, Any], run_module: ModuleRunner) -> None:
    kernel["adapter"] = FakeIPVSAdapter(Service(VIP, 6443, real_servers=(RealServer("10.0.0.1", 6443, 1),)))
    result = run_module(ARGS, check_mode=True)
    assert result["changed"] is True
    assert kernel["adapter"].applied == []
    assert kernel["adapter"].gets == 1
    assert kernel["modprobe"] == []
    assert result["actions"] == [f"add real server 10.0.0.2:6443 to TCP {VIP}:6443 (weight 3, masquerade)"]
    assert [r["address"] for r in result["service"]["real_servers"]] == ["10.0.0.1", "10.0.0.2"]


def test_check_mode_without_ip_vs_loaded_reads_nothing(
    kernel: dict[str, Any], run_module: ModuleRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ipvs, "ipvs_loaded", lambda proc_root="/proc": False)
    result = run_module(ARGS, check_mode=True)
    assert result["changed"] is True
    assert kernel["adapter"].gets == 0
    assert kernel["modprobe"] == []


def test_diff_shows_before_and_after(kernel: dict[str, Any], run_module: ModuleRunner) -> None:
    kernel["adapter"] = FakeIPVSAdapter(
        Service(
            VIP, 6443, scheduler="wlc", real_servers=(RealServer("10.0.0.1", 6443, 1), RealServer("10.0.0.9", 6443))
        )
    )
    result = run_module(ARGS, diff=True, check_mode=True)
    assert result["diff"]["before"] == {
        "address": VIP,
        "port": 6443,
        "protocol": "tcp",
        "scheduler": "wlc",
        "persistence_timeout": None,
        "real_servers": [
            {"address": "10.0.0.1", "port": 6443, "weight": 1, "forwarding": "masquerade"},
            {"address": "10.0.0.9", "port": 6443, "weight": 1, "forwarding": "masquerade"},
        ],
    }
    assert result["diff"]["after"]["scheduler"] == "rr"
    assert result["diff"]["after"]["real_servers"] == [
        {"address": "10.0.0.1", "port": 6443, "weight": 1, "forwarding": "masquerade"},
        {"address": "10.0.0.2", "port": 6443, "weight": 3, "forwarding": "masquerade"},
    ]
    assert kernel["adapter"].applied == []


def test_absent_removes_and_returns_empty_service(kernel: dict[str, Any], run_module: ModuleRunner) -> None:
    kernel["adapter"] = FakeIPVSAdapter(Service(VIP, 6443))
    result = run_module({"address": VIP, "port": 6443, "state": "absent"}, diff=True)
    assert result["changed"] is True
    assert [a.kind for a in kernel["adapter"].applied] == ["delete_service"]
    assert result["service"] == {}
    assert result["diff"]["after"] == {}
    assert kernel["modprobe"] == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"port": 70000}, "port 70000 is out of range 1..65535"),
        ({"scheduler": "fastest"}, "scheduler 'fastest' is unknown"),
        ({"address": "not-an-ip"}, "address 'not-an-ip' is not a valid IPv4 or IPv6 address"),
        ({"real_servers": [{"address": "fd00::1", "port": 6443}]}, "real server fd00::1 is IPv6"),
    ],
)
def test_bad_input_fails_with_the_message_and_touches_nothing(
    kernel: dict[str, Any], run_module: ModuleRunner, args: dict[str, Any], fragment: str
) -> None:
    result = run_module({**ARGS, **args})
    assert result["failed"] is True
    assert fragment in result["msg"]
    assert kernel["adapter"].applied == []
    assert kernel["adapter"].gets == 0
    assert kernel["modprobe"] == []


def test_kernel_error_is_reported_as_failure(kernel: dict[str, Any], run_module: ModuleRunner) -> None:
    class Failing(FakeIPVSAdapter):
        def apply(self, actions: list[Action]) -> None:
            raise _ipvs.IPVSError(f"adding real server 10.0.0.1:6443 to TCP {VIP}:6443: EEXIST")

    kernel["adapter"] = Failing(Service(VIP, 6443))
    result = run_module(ARGS)
    assert result["failed"] is True
    assert result["msg"] == f"adding real server 10.0.0.1:6443 to TCP {VIP}:6443: EEXIST"


def test_missing_pyroute2_is_reported_with_missing_required_lib(
    kernel: dict[str, Any], run_module: ModuleRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pyroute2() -> None:
        raise MissingLibraryError("pyroute2", "Traceback ...\nModuleNotFoundError: No module named 'pyroute2'\n")

    monkeypatch.setattr(ipvs_service, "make_adapter", no_pyroute2)
    result = run_module(ARGS)
    assert result["failed"] is True
    assert "Failed to import the required Python library (pyroute2)" in result["msg"]
    # the import traceback is passed as exception=; ansible-core 2.19 shows it only with tracebacks enabled
    assert kernel["modprobe"] == []


def test_real_adapter_reports_missing_pyroute2(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyRoute2IPVS turns the ImportError into MissingLibraryError (pyroute2 hidden from import)."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pyroute2" or name.startswith("pyroute2."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingLibraryError) as excinfo:
        _ipvs.PyRoute2IPVS()
    assert excinfo.value.library == "pyroute2"
    assert "ImportError" in excinfo.value.import_traceback
