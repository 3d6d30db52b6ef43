# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.kubeproxy_exclude_cidr module and may change in any release without notice.

"""kube-proxy's ``ipvs.excludeCIDRs``: validation, a pure planner, an in-place text edit and the module's run.

kubeadm keeps kube-proxy's configuration as YAML text under the ``config.conf`` key of the
``kube-system/kube-proxy`` ConfigMap. Only the ``excludeCIDRs`` value under ``ipvs:`` is edited, line by
line with the collection's one in-place editor (``_yaml_in_place``), so every other line of that text stays
byte-for-byte as it was; the result is re-parsed and must equal the intended configuration. Everything except
``run`` is pure logic.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._daemonset_restart import (
    daemonset_restart_due,
    record_running_configuration,
    restarted_for,
    rollout_restart,
    update_strategy,
    wait_daemonset_rollout,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    KubeAPIError,
    daemonset_path,
    import_yaml,
    object_path,
    update_with_retry,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._yaml_in_place import (
    EditMismatchError,
    EditNotValidError,
    ListStyle,
    check_kind,
    plain_or_quoted,
    reported_as,
    set_block_list,
    verified,
)

KIND = "KubeProxyConfiguration"
API_GROUP = "kubeproxy.config.k8s.io"
EXCLUDE_KEY = "excludeCIDRs"
STATES = ("present", "absent")


class KubeProxyConfigError(Exception):
    """The one error of this domain; its message is meant for the user as is."""


class RestartError(KubeProxyConfigError):
    """The configuration was written but restarting (or waiting for) kube-proxy failed."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


# --------------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------------


def parse_config(text: Any) -> dict[str, Any]:
    """The KubeProxyConfiguration in ``text``; ``KubeProxyConfigError`` naming the problem otherwise."""
    if not isinstance(text, str):
        raise KubeProxyConfigError(f"the configuration is not text but {type(text).__name__}")
    yaml = import_yaml()
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeProxyConfigError(f"the configuration is not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        found = "empty" if config is None else f"a {type(config).__name__}"
        raise KubeProxyConfigError(f"the configuration is {found}, not a {KIND} mapping")
    with reported_as(KubeProxyConfigError):
        check_kind(config, KIND, API_GROUP, "the configuration")
    ipvs = config.get("ipvs")
    if ipvs is not None and not isinstance(ipvs, dict):
        raise KubeProxyConfigError(f"ipvs is {ipvs!r}, not a mapping")
    excludes = (ipvs or {}).get(EXCLUDE_KEY)
    if excludes is not None and not isinstance(excludes, list):
        raise KubeProxyConfigError(f"ipvs.{EXCLUDE_KEY} is {excludes!r}, not a list")
    return config


def current_excludes(config: Mapping[str, Any]) -> list[Any]:
    """``ipvs.excludeCIDRs`` as a list (``[]`` when unset or null)."""
    ipvs = config.get("ipvs") or {}
    return list(ipvs.get(EXCLUDE_KEY) or [])


def proxy_mode(config: Mapping[str, Any]) -> str:
    """kube-proxy's ``mode``; ``""`` means the platform default (iptables on Linux)."""
    mode = config.get("mode")
    return "" if mode is None else str(mode)


def normalize_cidrs(values: Any) -> list[str]:
    """Canonical CIDRs, in order and without duplicates; a bare address becomes a /32 or /128."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise KubeProxyConfigError(f"cidrs must be a list of addresses or CIDRs, not {values!r}")
    result: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise KubeProxyConfigError(f"{value!r} is not an IPv4 or IPv6 address or CIDR")
        text = value.strip()
        if "%" in text:
            raise KubeProxyConfigError(f"{text} carries an IPv6 zone index, which excludeCIDRs does not accept")
        try:
            if "/" in text:
                network = ipaddress.ip_network(text, strict=False)
                if network.network_address != ipaddress.ip_interface(text).ip:
                    host = ipaddress.ip_interface(text).ip
                    raise KubeProxyConfigError(
                        f"{text} has host bits set: write {network} for the network or "
                        f"{host}/{network.max_prefixlen} for the single address"
                    )
            else:
                network = ipaddress.ip_network(ipaddress.ip_address(text))
        except ValueError as exc:
            raise KubeProxyConfigError(f"{text} is not a valid IPv4 or IPv6 address or CIDR") from exc
        canonical = str(network)
        if canonical not in result:
            result.append(canonical)
    if not result:
        raise KubeProxyConfigError("cidrs is empty: give at least one address or CIDR")
    return result


def _equivalence_key(value: Any) -> Any:
    """Entries naming the same network compare equal (``FD00:0::1/128`` == ``fd00::1``); others by text."""
    text = str(value).strip()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return text


# --------------------------------------------------------------------------------------------------
# Planning (pure)
# --------------------------------------------------------------------------------------------------


def plan_exclude(config: Mapping[str, Any], cidrs: Iterable[str], state: str) -> tuple[list[Any], bool]:
    """The new ``excludeCIDRs`` list and whether it differs from the current one.

    Existing entries keep their spelling and order; ``present`` appends the missing ``cidrs`` and
    ``absent`` removes the listed ones. Equivalent spellings of a network are equal. Entries are
    compared as networks, not by containment: a /32 inside an existing /16 is still added.
    """
    if state not in STATES:
        raise KubeProxyConfigError(f"state {state!r} is not one of {', '.join(STATES)}")
    existing = current_excludes(config)
    wanted = normalize_cidrs(list(cidrs))
    have = {_equivalence_key(entry) for entry in existing}
    if state == "present":
        missing = [cidr for cidr in wanted if _equivalence_key(cidr) not in have]
        return existing + missing, bool(missing)
    unwanted = {_equivalence_key(cidr) for cidr in wanted}
    kept = [entry for entry in existing if _equivalence_key(entry) not in unwanted]
    return kept, len(kept) != len(existing)


# --------------------------------------------------------------------------------------------------
# Rendering: an in-place edit of the ipvs block
# --------------------------------------------------------------------------------------------------

# As kubeadm writes it: an empty list is ``excludeCIDRs: null``; a missing ipvs block comes last.
KUBEADM_STYLE = ListStyle(empty="null", inline=True, parent_first=False)
_scalar = plain_or_quoted  # the spelling of one entry


def _edit(text: str, new_excludes: list[Any]) -> str:
    with reported_as(KubeProxyConfigError):
        return set_block_list(text, "ipvs", EXCLUDE_KEY, new_excludes, KUBEADM_STYLE)


def render_config(original_text: str, config: Mapping[str, Any], new_excludes: list[Any]) -> str:
    """``original_text`` with only ``ipvs.excludeCIDRs`` set to ``new_excludes`` (``null`` when empty).

    Every other line is kept byte-for-byte. The result is re-parsed and must equal ``config`` with the
    new list, or ``KubeProxyConfigError`` is raised and nothing should be written.
    """
    new_text = _edit(original_text, list(new_excludes))
    expected = copy.deepcopy(dict(config))
    if new_excludes or EXCLUDE_KEY in (expected.get("ipvs") or {}):
        ipvs = dict(expected.get("ipvs") or {})
        ipvs[EXCLUDE_KEY] = list(new_excludes) or None
        expected["ipvs"] = ipvs
    try:
        return verified(new_text, expected)
    except EditNotValidError as exc:
        raise KubeProxyConfigError(
            f"editing ipvs.{EXCLUDE_KEY} in place produced an invalid text: the configuration is not valid YAML: {exc}"
        ) from exc
    except EditMismatchError as exc:
        raise KubeProxyConfigError(
            f"editing ipvs.{EXCLUDE_KEY} in place did not give the intended configuration; the text is laid out "
            "in a way this module does not handle: set the value by hand"
        ) from exc


# --------------------------------------------------------------------------------------------------
# The module's whole run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    changed: bool
    exclude_cidrs: list[Any]
    mode: str
    restarted: bool
    diff: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def mode_is_ipvs(self) -> bool:
        return self.mode == "ipvs"

    def result(self) -> dict[str, Any]:
        """The module's return values (without ``diff`` and ``warnings``)."""
        return {
            "changed": self.changed,
            "exclude_cidrs": list(self.exclude_cidrs),
            "mode": self.mode,
            "mode_is_ipvs": self.mode_is_ipvs,
            "restarted": self.restarted,
        }


@dataclass
class _Seen:
    """What the last ``mutate`` call found and computed (``update_with_retry`` may call it again)."""

    before: str = ""
    after: str = ""
    excludes: list[Any] = field(default_factory=list)
    mode: str = ""
    changed: bool = False


def mode_warning(mode: str, where: str) -> str | None:
    if mode == "ipvs":
        return None
    what = f"mode {mode!r}" if mode else "the default mode (iptables on Linux)"
    return f"kube-proxy runs in {what} according to {where}, not ipvs: excludeCIDRs is harmless there but not needed"


def run(params: Mapping[str, Any], client_factory: Callable[[], Any], check_mode: bool) -> Outcome:
    """Validate, read the ConfigMap, plan, write it back (unless ``check_mode``) and optionally restart.

    ``client_factory()`` returns an object with ``get``, ``put`` and ``patch`` (a ``KubeClient``);
    ``close()`` is called on it at the end when it has one. The CIDRs are validated before it is called.
    """
    cidrs = normalize_cidrs(params.get("cidrs"))
    state = params.get("state") or "present"
    if state not in STATES:
        raise KubeProxyConfigError(f"state {state!r} is not one of {', '.join(STATES)}")
    namespace = params.get("namespace") or "kube-system"
    name = params.get("configmap") or "kube-proxy"
    key = params.get("key") or "config.conf"
    daemonset = params.get("daemonset") or "kube-proxy"
    restart = bool(params.get("restart"))
    wait = bool(params.get("wait"))
    wait_timeout = params.get("wait_timeout")
    wait_timeout = 300 if wait_timeout is None else int(wait_timeout)
    where = f"ConfigMap {namespace}/{name}, key {key}"
    path = object_path("/api/v1", namespace, "configmaps", name)
    seen = _Seen()

    def mutate(obj: dict[str, Any]) -> dict[str, Any] | None:
        data = obj.get("data") or {}
        if key not in data:
            keys = ", ".join(sorted(data)) or "none"
            raise KubeProxyConfigError(f"ConfigMap {namespace}/{name} has no key {key!r} (keys: {keys})")
        text = data[key]
        try:
            config = parse_config(text)
            new_excludes, changed = plan_exclude(config, cidrs, state)
            new_text = render_config(text, config, new_excludes) if changed else text
        except KubeProxyConfigError as exc:
            raise KubeProxyConfigError(f"{where}: {exc}") from exc
        seen.before, seen.after, seen.excludes = text, new_text, new_excludes
        seen.mode, seen.changed = proxy_mode(config), changed
        if not changed:
            return None
        obj["data"][key] = new_text
        return obj

    client = client_factory()
    try:
        pods: dict[str, Any] = {}  # the DaemonSet, with restart
        if restart:
            try:
                pods = client.get(daemonset_path(namespace, daemonset))  # fail before writing anything
            except KubeAPIError as exc:
                raise _daemonset_error(exc, namespace, daemonset) from exc
        try:
            before = client.get(path) if check_mode or (restart and restarted_for(pods) is None) else None
            after = mutate(copy.deepcopy(before)) if before is not None else None
        except KubeAPIError as exc:
            raise _configmap_error(exc, namespace, name, cidrs) from exc
        if check_mode:
            after = after or before
        else:
            if after is not None:  # a change is coming and the DaemonSet has no marker yet
                pods = record_running_configuration(client, namespace, daemonset, pods, before)
            try:
                before, after = update_with_retry(client, path, mutate)
            except KubeAPIError as exc:
                raise _configmap_error(exc, namespace, name, cidrs) from exc

        warnings = [w for w in [mode_warning(seen.mode, where)] if w]
        diff = {"before": seen.before, "after": seen.after, "before_header": where, "after_header": where}
        # Due when the pods run another ConfigMap than this one, even if an earlier run made the change and died
        # before restarting; in check mode a DaemonSet without a marker counts as running the ConfigMap before.
        restarted = restart and daemonset_restart_due(pods, before, after)
        outcome = Outcome(seen.changed or restarted, seen.excludes, seen.mode, restarted, diff, warnings)
        if not restarted or check_mode:
            return outcome
        try:
            patched = rollout_restart(client, namespace, daemonset, configmap=after)
            if update_strategy(patched) == "OnDelete" and not wait:
                warnings.append(
                    f"DaemonSet {namespace}/{daemonset} uses the OnDelete update strategy: its pods are not "
                    "replaced by the restart; delete them for kube-proxy to read the new configuration"
                )
            if wait:
                wait_daemonset_rollout(client, namespace, daemonset, wait_timeout)
        except KubeAPIError as exc:
            done = Outcome(seen.changed, seen.excludes, seen.mode, False, diff, warnings)
            raise RestartError(f"{where} was updated, but restarting kube-proxy failed: {exc}", done) from exc
        return outcome
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()


def _daemonset_error(exc: KubeAPIError, namespace: str, daemonset: str) -> KubeAPIError:
    """A missing DaemonSet explained; any other error as it is."""
    if exc.status != 404:
        return exc
    return KubeAPIError(
        f"DaemonSet {namespace}/{daemonset} was not found, so kube-proxy cannot be restarted through it "
        f"({exc}): name kube-proxy's DaemonSet in daemonset, or set restart to false and restart kube-proxy "
        "by other means; nothing was changed",
        404,
    )


def _configmap_error(exc: KubeAPIError, namespace: str, name: str, cidrs: list[str]) -> KubeAPIError:
    """A missing ConfigMap explained (kube-proxy not managed by kubeadm); any other error as it is."""
    if exc.status != 404:
        return exc
    return KubeAPIError(
        f"ConfigMap {namespace}/{name} was not found ({exc}): kube-proxy does not seem to be managed by kubeadm "
        "on this cluster. Set excludeCIDRs in kube-proxy's own configuration file (ipvs: excludeCIDRs: [...]) "
        f"or with its flag --ipvs-exclude-cidrs={','.join(cidrs)}",
        404,
    )
