"""molecule/day2 on the lab the suites before it leave (site.yml applied, three masters): a fourth master joins
the cluster (`lab.py join`, as `kubeadm join --control-plane` makes it) and playbooks/add_master.yml reaches every
node; then it leaves (`lab.py leave`, as `kubeadm reset` there) and playbooks/remove_master.yml takes it out.
molecule's verify runs the default scenario's checks after each step, on every node the inventory then lists.
"""

from __future__ import annotations

import lab as labmod
from scenarios import molecule


def test_a_fourth_master_joins_then_leaves_every_node_follows(lab):
    before = labmod.load_state()
    run = molecule("test", "--scenario-name", "day2", "--destroy", "never")
    assert run.returncode == 0, "molecule test -s day2 failed (its output is above)"
    after = labmod.load_state()
    # The side effects ran (molecule passes a scenario whose side-effect playbook is missing, with a warning).
    newcomer = f"cp{len([n for n in before['nodes'] if n['role'] == 'control-plane']) + 1}"
    assert after.get("joined", [])[len(before.get("joined", [])) :] == [newcomer]
    assert after.get("left", [])[len(before.get("left", [])) :] == [newcomer]
    # The lab is back to its own nodes, for the suite's last check (lab down leaves nothing).
    assert after["nodes"] == before["nodes"]
