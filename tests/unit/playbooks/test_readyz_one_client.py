"""One /readyz client for the playbooks and roles: the kubeha.apiserver.apiserver_readyz module (issue "one home for
each concept"); no task checks /readyz with ansible.builtin.uri any more.

The search reads every task of the roles and playbooks (blocks, rescues and handlers included), with its negative
control on an inline sample. The certificate role's peers check (tasks/peers.yml), the one whose message is built from
the module's results, runs as it is with the real ansible-playbook against stand-in apiservers on 127.0.0.1 and
127.0.0.2 (tests/unit/tls_rig.py): it passes while both peers answer, and names the one that does not once it is gone.
The playbooks' checks (remove_master.yml's probe of the remaining masters, the VIP waits of add_master.yml,
remove_master.yml and the local_proxy role) run the same way, each task taken from its file.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from ansible_tasks import tasks_in
from tls_rig import closed_port

REPO = Path(__file__).resolve().parents[3]
URI = {"ansible.builtin.uri", "ansible.legacy.uri", "uri"}
READYZ = "kubeha.apiserver.apiserver_readyz"


def uri_readyz_tasks(text: str, where: str) -> list[str]:
    """``where: task name`` of each uri task whose arguments (its url) say readyz."""
    found = []
    for task in tasks_in(yaml.safe_load(text)):
        for module in URI & set(task):
            if "readyz" in yaml.safe_dump(task[module]):
                found.append(f"{where}: {task['name']}")
    return found


def yaml_files() -> list[Path]:
    return sorted(
        [*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("roles/*/handlers/*.yml"), *REPO.glob("playbooks/*.yml")]
    )


def test_no_role_or_playbook_checks_readyz_with_uri():
    found = [
        line for path in yaml_files() for line in uri_readyz_tasks(path.read_text(), path.relative_to(REPO).as_posix())
    ]
    assert found == []


SAMPLE = """
- name: A play
  hosts: all
  tasks:
    - name: Not a uri task, only a name that says /readyz
      ansible.builtin.debug:
        msg: /readyz
    - name: A uri task elsewhere
      ansible.builtin.uri:
        url: https://10.0.0.1:6443/version
    - name: A block
      block:
        - name: Nothing here
          ansible.builtin.meta: noop
      rescue:
        - name: The old way
          uri:
            url: "https://{{ item }}/readyz"
            ca_path: /etc/kubernetes/pki/ca.crt
"""


def test_negative_control_the_search_finds_a_uri_readyz_task():
    assert uri_readyz_tasks(SAMPLE, "sample.yml") == ["sample.yml: The old way"]


def test_the_checks_are_the_module():
    """Where the uri tasks and apiserver_proxy's VIP wait were: the peers, a restarted master, the remaining masters,
    and the VIPs after the local proxy is installed, a master added or removed (apiserver_proxy no longer waits)."""
    using = {}
    for path in yaml_files():
        tasks = [task for task in tasks_in(yaml.safe_load(path.read_text())) if READYZ in task]
        if tasks:
            using[path.relative_to(REPO).as_posix()] = len(tasks)
        for task in tasks_in(yaml.safe_load(path.read_text())):
            if (
                "kubeha.apiserver.apiserver_proxy" in task
                and "verify_timeout" in task["kubeha.apiserver.apiserver_proxy"]
            ):
                assert task["kubeha.apiserver.apiserver_proxy"]["verify_timeout"] == 0, (path, task["name"])
    assert using == {
        "playbooks/add_master.yml": 1,
        "playbooks/remove_master.yml": 2,
        "roles/apiserver_cert_sans/tasks/activate.yml": 1,
        "roles/apiserver_cert_sans/tasks/peers.yml": 1,
        "roles/local_proxy/tasks/present.yml": 1,
    }


PEERS_PLAY = """
- name: The certificate role's peers check, from cp1
  hosts: cp1
  gather_facts: false
  tasks:
    - name: Include it
      ansible.builtin.include_role:
        name: kubeha.apiserver.apiserver_cert_sans
        tasks_from: peers
      vars:
        apiserver_cert_sans_master: cp1
"""


def run_peers(run_many, directory: Path, ca: Path, port: int) -> subprocess.CompletedProcess:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    settings = {"apiserver_cert_sans_ca_cert": str(ca), "local_proxy_apiserver_port": port,
                "apiserver_cert_sans_peer_timeout": 1}  # fmt: skip
    masters = {"cp1": {"ansible_host": "127.0.0.9"}, "cp2": {"ansible_host": "127.0.0.1"},
               "cp3": {"ansible_host": "127.0.0.2"}}  # fmt: skip
    inventory = {"all": {"vars": local | settings, "children": {"kube_control_plane": {"hosts": masters}}}}
    (directory / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (directory / "play.yml").write_text(PEERS_PLAY)
    argv = ["ansible-playbook", "-i", str(directory / "inventory.yml"), str(directory / "play.yml")]
    return run_many({"peers": argv})["peers"]


def test_the_peers_check_passes_while_both_answer_and_names_the_one_gone(pki, https_server, run_many, tmp_path):
    cp2 = https_server(host="127.0.0.1")
    cp3 = https_server(host="127.0.0.2", port=cp2.port)
    ready = run_peers(run_many, tmp_path, pki.ca.path, cp2.port)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert https_server.paths(cp2) == ["/readyz"] and https_server.paths(cp3) == ["/readyz"]
    https_server.kill(cp3)
    gone = run_peers(run_many, tmp_path, pki.ca.path, cp2.port)
    assert gone.returncode != 0, gone.stdout
    expected = (
        f"cp1 left as it is: cp3 (127.0.0.2:{cp2.port}) does not answer /readyz: connection refused (after 1 s); "
        "never two apiservers down at once"
    )
    assert f'"msg": "{expected}"' in gone.stdout, gone.stdout
    https_server.kill(cp2)
    both = run_peers(run_many, tmp_path, pki.ca.path, cp2.port)
    reasons = [
        f"{peer} (127.0.0.{n}:{cp2.port}) does not answer /readyz: connection refused"
        for peer, n in (("cp2", 1), ("cp3", 2))
    ]
    said = [
        f"cp1 left as it is: {'; '.join(order)} (after 1 s); never two apiservers down at once"
        for order in (reasons, reasons[::-1])
    ]
    assert any(f'"msg": "{msg}"' in both.stdout for msg in said), both.stdout


def task_named(relative: str, name: str) -> dict[str, Any]:
    return next(task for task in tasks_in(yaml.safe_load((REPO / relative).read_text())) if task["name"] == name)


VIP_WAIT = "Wait (30 s at most) until this node's VIPs answer /readyz, with the cluster CA verified"
# Each playbook's wait, and the register of its read of the guard's configuration.
VIP_WAITS = {"playbooks/remove_master.yml": "remove_master_guard_after", "playbooks/add_master.yml": "add_master_guard"}
PRESENT_WAIT = "Wait (60 s at most) until the apiservers answer /readyz through the VIP, with the cluster CA verified"
PROBE = "Probe the remaining masters' /readyz from this node, as the guard does (once each, 3 s at most)"
AT_LEAST_ONE = "At least one remaining master is ready for this node"


def test_the_playbooks_checks_as_they_are_against_stand_in_apiservers(pki, https_server, run_many, tmp_path):
    """remove_master.yml's probe of the remaining masters (one ready is enough; none: it stops, naming them) and the
    VIP waits of add_master.yml, remove_master.yml and the local_proxy role (a VIP verified as ``kubernetes``), each
    task taken from its file as it is, what the tasks before it left set as facts."""
    master, gone = https_server(), closed_port()
    vip = https_server(issued=pki.named)  # a certificate that names kubernetes, not the VIP's address
    config = {"vip": [vip.address], "port": vip.port, "ca_file": str(pki.ca.path), "timeout_s": 1.0,
              "client_cert_file": None, "client_key_file": None}  # fmt: skip
    slurped = {"content": base64.b64encode(json.dumps(config).encode()).decode()}
    facts = dict.fromkeys([*VIP_WAITS.values(), "remove_master_guard"], slurped)
    local_proxy = {"local_proxy_vips": [vip.address], "local_proxy_port": vip.port,
                   "local_proxy_ca_file": str(pki.ca.path), "local_proxy_timeout": 1.0}  # fmt: skip
    checks = [
        *(task_named(path, VIP_WAIT) for path in VIP_WAITS),
        task_named("roles/local_proxy/tasks/present.yml", PRESENT_WAIT) | {"vars": local_proxy},
        task_named("playbooks/remove_master.yml", PROBE),
        task_named("playbooks/remove_master.yml", AT_LEAST_ONE),
    ]
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": {"w1": local}}}))
    commands = {}
    for case, masters in (("one-ready", [str(gone), str(master)]), ("none", [str(gone)])):
        setup = {"name": "What the plays before left", "ansible.builtin.set_fact": facts | {"day2_masters": masters}}
        play = [{"name": "The checks", "hosts": "w1", "gather_facts": False, "tasks": [setup, *checks]}]
        (tmp_path / f"{case}.yml").write_text(yaml.safe_dump(play, sort_keys=False))
        commands[case] = ["ansible-playbook", "-i", str(tmp_path / "inventory.yml"), str(tmp_path / f"{case}.yml")]
    results = run_many(commands)
    ok, none = results["one-ready"], results["none"]
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert https_server.paths(master) == ["/readyz"]
    assert https_server.paths(vip) == ["/readyz"] * 6  # three waits in each run, one probe each
    assert none.returncode != 0, none.stdout
    expected = (
        f"w1 reaches none of ['{gone}']: nothing was changed "
        f"(none of {gone} answers /readyz: {gone}: connection refused)"
    )
    assert f'"msg": "{expected}"' in none.stdout, none.stdout
