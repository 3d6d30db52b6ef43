"""One home for the values every role and playbook shares (roles/kubeha_defaults) and for kube-proxy's restart where it
is a systemd unit (the local_proxy role's kube_proxy_restart entry point).

A shared value is written once, in kubeha_defaults' defaults: no other role's defaults, tasks or vars and no playbook
carries it (the cluster CA's path included: prepare_node.yml reads it from there too), but for the copies listed.

The real ansible-playbook applies each role alone in a play of its own (its tasks skipped, so that its defaults are
the play's): each gets the VIPs, the ports, the prefix and the configuration directory through its dependency on
kubeha_defaults, and a value the inventory sets wins over them (the negative control: the same hosts without it keep
the defaults). site.yml's restart plays, taken from the file as they are, skip everything on every node when the first
master's module rolled nothing; the entry point refuses a call that does not say whether a restart is due.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_tasks import tasks_in

REPO = Path(__file__).resolve().parents[3]
HOME = "roles/kubeha_defaults/defaults/main.yml"
LITERALS = (
    "169.254.100.1",
    "fd6b:6861::1",
    "6444",
    "/opt/kubeha-apiserver",
    "/etc/kubeha-apiserver",
    "6443",
    "/etc/kubernetes/pki/ca.crt",
)
# Copies still written outside the home (file: line, without its number): none; a new copy fails the test.
KNOWN_COPIES: list[str] = []
ROLES = ("local_proxy", "apiserver_cert_sans", "kubeconfig_endpoint")
SHOWN = {
    "kubeha_defaults": [
        "kubeha_defaults_vips",
        "kubeha_defaults_server",
        "kubeha_defaults_python",
        "kubeha_defaults_guard_config",
    ],
    "local_proxy": [
        "local_proxy_vip4",
        "local_proxy_vip6",
        "local_proxy_port",
        "local_proxy_prefix",
        "local_proxy_config_dir",
        "local_proxy_apiserver_port",
        "local_proxy_ca_file",
    ],
    "apiserver_cert_sans": [
        "apiserver_cert_sans_vip4",
        "apiserver_cert_sans_vip6",
        "apiserver_cert_sans_prefix",
        "apiserver_cert_sans_python",
        "apiserver_cert_sans_apiserver_port",
    ],
    "kubeconfig_endpoint": ["kubeconfig_endpoint_server", "kubeconfig_endpoint_python"],
}
# h1 sets nothing; h2 sets every user-facing value (group_vars of its group); h3 has no IPv4 VIP.
SET = {"local_proxy_vip4": "10.99.0.1", "local_proxy_vip6": "", "local_proxy_port": 7444,
       "local_proxy_prefix": "/srv/kha", "local_proxy_config_dir": "/srv/kha-etc",
       "local_proxy_apiserver_port": 8443, "local_proxy_ca_file": "/srv/kha-etc/ca.crt"}  # fmt: skip


def literal_lines(name: str, text: str) -> list[str]:
    """The lines of a YAML file, full-line comments left out (documentation), that carry one of the shared values."""
    return [
        f"{name}:{number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), 1)
        if not line.lstrip().startswith("#") and any(value in line for value in LITERALS)
    ]


def without_number(line: str) -> str:
    """``file:12: text`` as ``file: text``."""
    return re.sub(r":\d+: ", ": ", line, count=1)


def test_each_shared_value_is_written_once():
    patterns = ("playbooks/*.yml", "roles/*/defaults/*.yml", "roles/*/tasks/*.yml", "roles/*/vars/*.yml")
    files = sorted({path for pattern in patterns for path in REPO.glob(pattern)} - {REPO / HOME})
    copies = [line for path in files for line in literal_lines(path.relative_to(REPO).as_posix(), path.read_text())]
    assert [without_number(line) for line in copies] == KNOWN_COPIES, copies
    home = literal_lines(HOME, (REPO / HOME).read_text())
    assert [sum(value in line for line in home) for value in LITERALS] == [1] * len(LITERALS), home


def test_negative_control_a_copied_value_is_found():
    text = (REPO / "playbooks" / "site.yml").read_text()
    planted = "# 169.254.100.1 in a comment is documentation\n" + text.replace(
        'cidrs: "{{ kubeha_defaults_vips }}"', "cidrs: [169.254.100.1]"
    )
    assert [line.split(": ", 1)[1] for line in literal_lines("site.yml", planted)] == ["cidrs: [169.254.100.1]"]


def test_negative_control_an_inline_default_of_the_ca_file_is_found():
    """prepare_node.yml's read of the CA, with the value written inline again as it was: found (its comment is not)."""
    text = (REPO / "playbooks" / "prepare_node.yml").read_text()
    shared = "local_proxy_ca_file | default(kubeha_defaults_ca_file)"
    assert shared in text
    planted = text.replace(shared, "local_proxy_ca_file | default('/etc/kubernetes/pki/ca.crt')")
    found = [line.split(": ", 1)[1] for line in literal_lines("prepare_node.yml", planted)]
    assert found == ["src: \"{{ local_proxy_ca_file | default('/etc/kubernetes/pki/ca.crt') }}\""]
    assert "/etc/kubernetes/pki/ca.crt" in text  # in a comment, documentation: not a copy
    assert literal_lines("prepare_node.yml", text) == []


def test_kube_proxy_is_restarted_by_one_task_file():
    """Only the entry point touches kube-proxy.service; site.yml (twice) and reset.yml include it."""
    touching, including = [], []
    for path in sorted([*REPO.glob("playbooks/*.yml"), *REPO.glob("roles/*/tasks/*.yml")]):
        for task in tasks_in(yaml.safe_load(path.read_text())):
            if "block" in task:
                continue
            if "kube-proxy.service" in yaml.safe_dump(task.get("ansible.builtin.systemd_service", {})):
                touching.append(path.relative_to(REPO).as_posix())
            if (task.get("ansible.builtin.include_role") or {}).get("tasks_from") == "kube_proxy_restart":
                including.append((path.name, task["vars"]))
    assert touching == ["roles/local_proxy/tasks/kube_proxy_restart.yml"] * 2
    assert [name for name, _arguments in including] == ["reset.yml", "site.yml", "site.yml"]
    # Each keeps its own condition: reset looks the unit up on every node and needs both results of the first master;
    # site looks it up only when a restart is due, each play after its own module.
    reset, exclude, endpoint = (arguments for _name, arguments in including)
    restart = "local_proxy_kube_proxy_restart"
    assert reset["local_proxy_kube_proxy_find_always"] is True
    both = r"\{\{ \S+\.reset_exclude\.restarted\s+or \S+\.reset_cluster_endpoint\.kube_proxy_restarted \}\}"
    assert re.fullmatch(both, reset[restart].strip())
    assert "site_exclude.restarted | default(false) }}" in exclude[restart]
    assert "site_cluster_endpoint.kube_proxy_restarted | default(false) }}" in endpoint[restart]
    assert "local_proxy_kube_proxy_find_always" not in exclude | endpoint


def values_play() -> list[dict]:
    """A play per role, the role applied alone with its tasks skipped: its defaults are the play's."""
    plays = []
    for role, names in SHOWN.items():
        mapping = ", ".join(f"'{name}': {name}" for name in names)
        plays.append({
            "name": f"{role} alone",
            "hosts": "all",
            "gather_facts": False,
            "roles": [{"role": f"kubeha.apiserver.{role}", "when": False}],
            "tasks": [{
                "name": "Show its values",
                "ansible.builtin.debug": {"msg": f"VALUES {role} {{{{ {{{mapping}}} | to_json | b64encode }}}}"},
            }],
        })  # fmt: skip
    return plays


RESTART_PLAY = """
- name: The entry point called without saying whether a restart is due
  hosts: cp1
  gather_facts: false
  tasks:
    - name: Include it
      ansible.builtin.include_role:
        name: kubeha.apiserver.local_proxy
        tasks_from: kube_proxy_restart
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory, run_many) -> dict[str, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("shared-defaults")
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    inventory = {
        "all": {
            "vars": local,
            "hosts": {"h1": None, "h3": {"local_proxy_vip4": ""}},
            "children": {"custom": {"hosts": {"h2": None}}},
        }
    }
    (d / "inventory").mkdir()
    (d / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (d / "inventory" / "group_vars").mkdir()
    (d / "inventory" / "group_vars" / "custom.yml").write_text(yaml.safe_dump(SET))
    (d / "values.yml").write_text(yaml.safe_dump(values_play(), sort_keys=False))
    # site.yml's two restart plays as they are; the first master's modules rolled nothing.
    site = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    restarts = [play for play in site if play.get("name", "").startswith("Restart kube-proxy")]
    assert len(restarts) == 2
    (d / "site-restarts.yml").write_text(yaml.safe_dump(restarts, sort_keys=False))
    nodes = {
        "all": {
            "vars": local,
            "children": {
                "kube_control_plane": {"hosts": {"cp1": {"site_exclude": {"restarted": False},
                                                         "site_cluster_endpoint": {"kube_proxy_restarted": False}}}},
                "kube_node": {"hosts": {"w1": None}},
            },
        }
    }  # fmt: skip
    (d / "nodes.yml").write_text(yaml.safe_dump(nodes))
    nodes["all"]["children"]["kube_control_plane"]["hosts"]["cp1"]["site_exclude"]["restarted"] = True
    (d / "nodes-due.yml").write_text(yaml.safe_dump(nodes))
    (d / "no-argument.yml").write_text(RESTART_PLAY)
    return run_many({
        "values": ["ansible-playbook", "-i", str(d / "inventory"), str(d / "values.yml")],
        "site-restarts": ["ansible-playbook", "-i", str(d / "nodes.yml"), str(d / "site-restarts.yml")],
        "site-restarts-due": ["ansible-playbook", "-i", str(d / "nodes-due.yml"), str(d / "site-restarts.yml")],
        "no-argument": ["ansible-playbook", "-i", str(d / "nodes.yml"), str(d / "no-argument.yml")],
    })  # fmt: skip


def shown(proc: subprocess.CompletedProcess) -> dict[tuple[str, str], dict]:
    """{(role, host): values} from the debug lines (`ok: [h1] => {"msg": "VALUES role {...}"}`)."""
    out = {}
    for host, role, values in re.findall(r'^ok: \[(\w+)\] => \{\s*"msg": "VALUES (\w+) ([\w+/=]+)"', proc.stdout, re.M):
        out[(role, host)] = json.loads(base64.b64decode(values))
    return out


def test_every_role_alone_gets_the_shared_defaults(results):
    run = results["values"]
    assert run.returncode == 0, run.stdout + run.stderr
    values = shown(run)
    assert values[("kubeha_defaults", "h1")] == {
        "kubeha_defaults_vips": ["169.254.100.1", "fd6b:6861::1"],
        "kubeha_defaults_server": "https://169.254.100.1:6444",
        "kubeha_defaults_python": "/opt/kubeha-apiserver/venv/bin/python",
        "kubeha_defaults_guard_config": "/etc/kubeha-apiserver/guard.json",
    }
    assert values[("local_proxy", "h1")] == {
        "local_proxy_vip4": "169.254.100.1",
        "local_proxy_vip6": "fd6b:6861::1",
        "local_proxy_port": 6444,
        "local_proxy_prefix": "/opt/kubeha-apiserver",
        "local_proxy_config_dir": "/etc/kubeha-apiserver",
        "local_proxy_apiserver_port": 6443,
        "local_proxy_ca_file": "/etc/kubernetes/pki/ca.crt",
    }
    assert values[("apiserver_cert_sans", "h1")] == {
        "apiserver_cert_sans_vip4": "169.254.100.1",
        "apiserver_cert_sans_vip6": "fd6b:6861::1",
        "apiserver_cert_sans_prefix": "/opt/kubeha-apiserver",
        "apiserver_cert_sans_python": "/opt/kubeha-apiserver/venv/bin/python",
        "apiserver_cert_sans_apiserver_port": 6443,
    }
    assert values[("kubeconfig_endpoint", "h1")] == {
        "kubeconfig_endpoint_server": "https://169.254.100.1:6444",
        "kubeconfig_endpoint_python": "/opt/kubeha-apiserver/venv/bin/python",
    }


def test_the_inventory_wins_over_them(results):
    values = shown(results["values"])
    assert values[("kubeha_defaults", "h2")] == {
        "kubeha_defaults_vips": ["10.99.0.1"],
        "kubeha_defaults_server": "https://10.99.0.1:7444",
        "kubeha_defaults_python": "/srv/kha/venv/bin/python",
        "kubeha_defaults_guard_config": "/srv/kha-etc/guard.json",
    }
    assert values[("local_proxy", "h2")] == SET
    assert values[("apiserver_cert_sans", "h2")] == {
        "apiserver_cert_sans_vip4": "10.99.0.1",
        "apiserver_cert_sans_vip6": "",
        # its own variable, as before: the local_proxy role's venv entry point makes the virtualenv there for it
        "apiserver_cert_sans_prefix": "/opt/kubeha-apiserver",
        "apiserver_cert_sans_python": "/opt/kubeha-apiserver/venv/bin/python",
        # the apiservers' port is the cluster's, one for every role
        "apiserver_cert_sans_apiserver_port": 8443,
    }
    assert values[("kubeconfig_endpoint", "h2")] == {
        "kubeconfig_endpoint_server": "https://10.99.0.1:7444",
        "kubeconfig_endpoint_python": "/srv/kha/venv/bin/python",
    }
    # Without an IPv4 VIP the endpoint is the IPv6 one.
    assert values[("kubeconfig_endpoint", "h3")]["kubeconfig_endpoint_server"] == "https://[fd6b:6861::1]:6444"
    assert values[("kubeha_defaults", "h3")]["kubeha_defaults_vips"] == ["fd6b:6861::1"]


def test_site_restarts_nothing_when_the_modules_rolled_nothing(results):
    run = results["site-restarts"]
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("TASK [kubeha.apiserver.local_proxy : Find a kube-proxy systemd unit]") == 2, run.stdout
    for task in ("Find a kube-proxy systemd unit", "Restart it where it is active"):
        header = rf"TASK \[kubeha\.apiserver\.local_proxy : {task}\][^\n]*\n"
        blocks = re.findall(header + r"(.*?)(?=\nTASK|\nPLAY)", run.stdout, re.S)
        assert [sorted(re.findall(r"^skipping: \[(\w+)\]", b, re.M)) for b in blocks] == [["cp1", "w1"]] * 2, run.stdout
    assert re.search(r"^cp1\s+:.*changed=0\s+unreachable=0\s+failed=0", run.stdout, re.M), run.stdout


def test_negative_control_a_restart_due_looks_the_unit_up_on_every_node(results):
    """The exclude was rolled: every node asks systemd (which answers, or fails where it is not PID 1, as here)."""
    run = results["site-restarts-due"]
    after = run.stdout.partition("TASK [kubeha.apiserver.local_proxy : Find a kube-proxy systemd unit]")[2]
    block = after.partition("TASK [")[0]
    assert sorted(re.findall(r"^(?:ok|changed|fatal): \[(\w+)\]", block, re.M)) == ["cp1", "w1"], run.stdout
    assert "skipping:" not in block, run.stdout


def test_negative_control_the_entry_point_needs_to_be_told(results):
    run = results["no-argument"]
    assert run.returncode != 0, run.stdout
    assert "missing required arguments: local_proxy_kube_proxy_restart" in run.stdout, run.stdout
