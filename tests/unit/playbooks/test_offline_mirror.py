"""docs/offline-mirror.md is what scripts/mirror_list.py makes of the roles now, and follows them when they change;
the pip options every virtualenv of the collection is made with come from the local_proxy_pip_* variables."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from ansible_tasks import tasks_in

REPO = Path(__file__).resolve().parents[3]


def load_script():
    spec = importlib.util.spec_from_file_location("mirror_list", REPO / "scripts" / "mirror_list.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mirror_list"] = module
    spec.loader.exec_module(module)
    return module


mirror_list = load_script()


def test_the_committed_document_is_up_to_date():
    assert (REPO / "docs" / "offline-mirror.md").read_text() == mirror_list.render(REPO), (
        "run: python scripts/mirror_list.py --write"
    )
    assert mirror_list.main(["--check"]) == 0


def test_it_lists_every_default_of_the_roles():
    text = mirror_list.render(REPO)
    local = yaml.safe_load((REPO / "roles/local_proxy/defaults/main.yml").read_text())
    certs = yaml.safe_load((REPO / "roles/apiserver_cert_sans/defaults/main.yml").read_text())
    for item in [
        *local["local_proxy_packages_ipvs"],
        *local["local_proxy_packages_haproxy"],
        *local["local_proxy_wheels"],
        *certs["apiserver_cert_sans_wheels"],
    ]:
        assert f"`{item}`" in text


def copy_roles(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "roles", root / "roles")
    shutil.copy(REPO / "galaxy.yml", root / "galaxy.yml")
    return root


def test_negative_control_a_changed_default_changes_the_document(tmp_path):
    root = copy_roles(tmp_path)
    defaults = root / "roles/local_proxy/defaults/main.yml"
    text = defaults.read_text()
    assert "local_proxy_packages_haproxy: [haproxy, " in text
    defaults.write_text(
        text.replace("local_proxy_packages_haproxy: [haproxy, ", "local_proxy_packages_haproxy: [haproxy, socat, ")
    )
    changed = mirror_list.render(root)
    assert changed != mirror_list.render(REPO)
    assert "`haproxy`, `socat`, `iproute2`" in changed


def test_a_missing_list_is_an_error_naming_the_file(tmp_path):
    root = copy_roles(tmp_path)
    certs = root / "roles/apiserver_cert_sans/defaults/main.yml"
    certs.write_text(certs.read_text().replace("apiserver_cert_sans_wheels:", "apiserver_cert_sans_wheelz:"))
    with pytest.raises(
        mirror_list.MirrorListError,
        match=r"apiserver_cert_sans/defaults/main.yml: no variable apiserver_cert_sans_wheels",
    ):
        mirror_list.render(root)


PIP_PLAY = """
- name: The local_proxy role's pip options, from its defaults and vars
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Defaults
      ansible.builtin.include_vars: {file: "{{ role_dir }}/defaults/main.yml"}
    - name: Vars
      ansible.builtin.include_vars: {file: "{{ role_dir }}/vars/main.yml"}
    - name: Show them
      ansible.builtin.debug:
        msg: "PIP_OPTIONS={{ local_proxy_pip_options | to_json }}"
"""


@pytest.fixture(scope="module")
def pip_options(tmp_path_factory, run_many) -> dict[str, list[str]]:
    play = tmp_path_factory.mktemp("pip") / "pip.yml"
    play.write_text(PIP_PLAY)
    base = ["ansible-playbook", str(play), "-e", f"role_dir={REPO / 'roles/local_proxy'}"]
    site = {
        "local_proxy_pip_index_url": "http://10.0.0.5/simple/",
        "local_proxy_pip_find_links": ["/srv/wheels", "http://10.0.0.5/wheels/"],
        "local_proxy_pip_trusted_hosts": ["10.0.0.5"],
        "local_proxy_pip_no_index": True,
    }
    procs = run_many({"default": base, "site": [*base, "-e", json.dumps(site)]})
    out = {}
    for key, proc in procs.items():
        assert proc.returncode == 0, proc.stdout + proc.stderr
        line = next(line for line in proc.stdout.splitlines() if "PIP_OPTIONS=" in line)
        out[key] = json.loads(json.loads("{" + line.strip().rstrip(",") + "}")["msg"].split("=", 1)[1])
    return out


def test_pip_uses_the_node_configuration_by_default(pip_options):
    assert pip_options["default"] == []


def test_pip_options_follow_the_variables(pip_options):
    assert pip_options["site"] == [
        "--index-url",
        "http://10.0.0.5/simple/",
        "--no-index",
        "--find-links=/srv/wheels",
        "--find-links=http://10.0.0.5/wheels/",
        "--trusted-host=10.0.0.5",
    ]


def test_every_pip_run_of_the_collection_takes_the_options():
    """pip runs in one task of the collection (tasks/venv.yml, which the other roles include); it takes them."""
    runs = []
    for path in sorted(
        [*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("roles/*/handlers/*.yml"), *REPO.glob("playbooks/*.yml")]
    ):
        for task in tasks_in(yaml.safe_load(path.read_text())):
            if "block" in task:  # its tasks come next, one by one
                continue
            body = yaml.safe_dump({k: v for k, v in task.items() if k != "name"})
            if "bin/pip" in body or "pip install" in body or {"ansible.builtin.pip", "pip"} & set(task):
                runs.append((path.relative_to(REPO).as_posix(), body))
    assert [run[0] for run in runs] == ["roles/local_proxy/tasks/venv.yml"], runs
    assert "local_proxy_pip_options" in runs[0][1]
