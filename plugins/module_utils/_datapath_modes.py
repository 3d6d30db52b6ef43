# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to the kubeha.apiserver collection: not a public API, may change without notice.
"""The data path of each mode: the mode picks a ``DataPath`` once, here, and nothing else asks which mode it is.

The guard builds its data path with ``make_data_path``; a change of mode (``_guard_daemon``) and ``--cleanup``
(``_guard_cli``) find the other modes' here.
"""

from __future__ import annotations

from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath import DataPath
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_haproxy import HaproxyDataPath
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_ipvs import IPVSDataPath
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_nftables import NftablesDataPath
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import GuardConfig
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks

# The data path of each mode (``_guard_config.MODES`` names them for the configuration).
DATA_PATHS: dict[str, type[DataPath]] = {path.mode: path for path in (IPVSDataPath, NftablesDataPath, HaproxyDataPath)}


def make_data_path(cfg: GuardConfig, hooks: Hooks) -> DataPath:
    return DATA_PATHS[cfg.mode](cfg, hooks)
