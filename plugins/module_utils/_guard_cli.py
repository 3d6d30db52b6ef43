# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It is the command line of the node-side
# guard installed and run by the local_proxy role, and may change in any release without notice.

"""The guard's command line: the entry point of the guard's zipapp, and ``--cleanup``.

Shipped to nodes as one file (the local_proxy role's zipapp of this module and the module_utils it imports) and
run as ``python kubeha-apiserver-guard.pyz --config FILE``: the daemon (``_guard_daemon.Guard``), with SIGTERM and
SIGINT to stop it, leaving the data path in place, and SIGHUP to reload its configuration. ``--once``: one round,
then exit; ``--cleanup``: remove everything the guard set up, every mode's data path included.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_modes import DATA_PATHS
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import (
    LOG,
    ConfigError,
    GuardConfig,
    GuardError,
    load_config,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_daemon import Guard
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_state import read_state
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import remove_interface


def cleanup(cfg: GuardConfig, hooks: Hooks | None = None) -> int:
    """``--cleanup``: remove what every data path set up for the VIPs (those of the state file too: the
    configuration may have changed since), the interface and the state file."""
    hooks = hooks or Hooks()
    failures = 0
    pairs = {(v, cfg.port) for v in cfg.vips}
    try:
        state = read_state(cfg.state_file)
    except GuardError:
        state = None
    if state is not None:
        pairs |= {(v, state.port) for v in state.vips}
    for kind in DATA_PATHS.values():  # every mode's: the mode may have changed since it was set up
        path = kind(cfg, hooks)
        try:
            for item in path.remove(sorted(pairs)):
                LOG.info("removed %s", item)
        # pyroute2 raises more than NetlinkError: the rest of the cleanup must still run
        except Exception as exc:
            failures += 1
            LOG.error("removing the %s data path: %s", kind.mode, exc)
        finally:
            path.close()
    try:
        for item in remove_interface(cfg.interface, cfg.vips, hooks.runner):
            LOG.info("removed %s", item)
    except GuardError as exc:
        failures += 1
        LOG.error("removing the plumbing: %s", exc)
    try:
        os.unlink(cfg.state_file)
        LOG.info("removed %s", cfg.state_file)
    except FileNotFoundError:
        pass
    except OSError as exc:
        failures += 1
        LOG.error("cannot remove %s: %s", cfg.state_file, exc.strerror or exc)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeha-apiserver-guard.pyz",
        description="Keep this node's kube-apiserver VIP pointed at the apiservers that are ready.",
    )
    parser.add_argument("--config", required=True, help="the guard's JSON configuration file")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--once", action="store_true", help="one probe and apply round, then exit (0: a backend is ready)"
    )
    action.add_argument(
        "--cleanup", action="store_true", help="remove the services, plumbing and state file, then exit"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None, hooks: Hooks | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        LOG.error("%s", exc)
        return 2
    if args.cleanup:
        return cleanup(cfg, hooks)
    guard = Guard(cfg, args.config, hooks)
    if args.once:
        try:
            guard.startup()
            guard.run_round()
            return 0 if guard.any_up() else 1
        finally:
            guard.close()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: guard.request_stop())
    signal.signal(signal.SIGINT, lambda _signum, _frame: guard.request_stop())
    signal.signal(signal.SIGHUP, lambda _signum, _frame: guard.request_reload())
    return guard.serve()


if __name__ == "__main__":
    raise SystemExit(main())
