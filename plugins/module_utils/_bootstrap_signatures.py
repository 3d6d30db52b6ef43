# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the
# kubeha.apiserver.cluster_endpoint module and may change in any release without notice.

"""The bootstrap-token signatures of cluster-info, as kubeadm's discovery checks them, and the wait for them.

kube-controller-manager's bootstrapsigner writes ``jws-kubeconfig-<token id>`` (a detached HS256 JWS keyed with the
token's secret) into ``kube-public/cluster-info`` after its kubeconfig changes; ``kubeadm join --discovery-token``
refuses cluster-info until then. Everything except ``wait_signed`` is pure logic.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._cluster_endpoint_input import (
    CLUSTER_INFO,
    TARGET_SPECS,
    ClusterEndpointError,
)

BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"
JWS_PREFIX = "jws-kubeconfig-"

_TOKEN_SECRET_NAME = re.compile(r"bootstrap-token-([a-z0-9]{6})")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def detached_jws(content: str, token_id: str, token_secret: str) -> str:
    """The detached JWS (HS256) the bootstrapsigner writes as ``jws-kubeconfig-<token_id>``.

    ``<header>..<signature>``: the compact serialization with the payload (``content``) left out, the
    header being ``{"alg":"HS256","kid":"<token_id>"}`` and the key the token secret.
    """
    header = _b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":")).encode("utf-8"))
    signing_input = f"{header}.{_b64url(content.encode('utf-8'))}".encode("ascii")
    signature = hmac.new(token_secret.encode("utf-8"), signing_input, hashlib.sha256).digest()
    return f"{header}..{_b64url(signature)}"


def signature_valid(detached: Any, content: str, token_id: str, token_secret: str) -> bool:
    """Whether ``detached`` is the signature of ``content`` by that token, as kubeadm's discovery decides."""
    if not isinstance(detached, str):
        return False
    return hmac.compare_digest(detached.encode(), detached_jws(content, token_id, token_secret).encode())


def _secret_value(secret: Mapping[str, Any], key: str) -> str:
    raw = (secret.get("data") or {}).get(key)
    if not raw:
        return ""
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return ""


def _expired(expiration: str, now: datetime.datetime) -> bool:
    """As the bootstrapsigner decides: an expiration that cannot be parsed counts as expired."""
    if not expiration:
        return False
    try:
        moment = datetime.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    except ValueError:
        return True
    if moment.tzinfo is None:
        return True
    return moment <= now


def signing_tokens(secrets: Iterable[Mapping[str, Any]], now: datetime.datetime) -> dict[str, str]:
    """``{token id: token secret}`` of the tokens the bootstrapsigner signs cluster-info with.

    Those are the secrets of type bootstrap.kubernetes.io/token named ``bootstrap-token-<id>`` with that
    ``token-id``, a ``token-secret``, ``usage-bootstrap-signing: "true"`` and no past expiration.
    """
    tokens: dict[str, str] = {}
    for secret in secrets:
        if secret.get("type") != BOOTSTRAP_TOKEN_TYPE:
            continue
        match = _TOKEN_SECRET_NAME.fullmatch(str((secret.get("metadata") or {}).get("name") or ""))
        token_id = _secret_value(secret, "token-id")
        token_secret = _secret_value(secret, "token-secret")
        if not match or token_id != match.group(1) or not token_secret:
            continue
        if _secret_value(secret, "usage-bootstrap-signing") != "true":
            continue
        if _expired(_secret_value(secret, "expiration"), now):
            continue
        tokens[token_id] = token_secret
    return tokens


def unsigned_tokens(configmap: Mapping[str, Any], tokens: Mapping[str, str], key: str = "kubeconfig") -> list[str]:
    """The ids of ``tokens`` whose ``jws-kubeconfig-<id>`` does not validate against the ConfigMap's ``key``."""
    data = configmap.get("data") or {}
    content = data.get(key)
    if not isinstance(content, str):
        return sorted(tokens)
    return sorted(
        tid for tid, secret in tokens.items() if not signature_valid(data.get(JWS_PREFIX + tid), content, tid, secret)
    )


TOKEN_SECRETS_PATH = "/api/v1/namespaces/kube-system/secrets?fieldSelector=" + urllib.parse.quote(
    f"type={BOOTSTRAP_TOKEN_TYPE}", safe=""
)


def wait_signed(
    client: Any,
    expected: str,
    timeout: float,
    interval: float = 1.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    now: Callable[[], datetime.datetime] | None = None,
) -> list[str]:
    """Poll until every signing token's JWS in cluster-info validates against ``expected``; their ids.

    The tokens are read again each round (one may be created or expire meanwhile). Raises
    ``ClusterEndpointError`` naming the token ids on timeout, or when cluster-info no longer holds
    ``expected`` (someone else changed it).
    """
    target = TARGET_SPECS[CLUSTER_INFO]
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    now = now or (lambda: datetime.datetime.now(datetime.UTC))
    deadline = clock() + timeout
    while True:
        configmap = client.get(target.path)
        content = (configmap.get("data") or {}).get(target.key)
        if content != expected:
            raise ClusterEndpointError(
                f"ConfigMap {target.object} was changed by someone else while waiting for its signatures: its "
                f"{target.key} is no longer what this task wrote"
            )
        tokens = signing_tokens(client.get(TOKEN_SECRETS_PATH).get("items") or [], now())
        pending = unsigned_tokens(configmap, tokens, target.key)
        if not pending:
            return sorted(tokens)
        remaining = deadline - clock()
        if remaining <= 0:
            ids = ", ".join(pending)
            raise ClusterEndpointError(
                f"timed out after {timeout:g}s waiting for the bootstrapsigner to re-sign ConfigMap {target.object}: "
                f"{', '.join(JWS_PREFIX + t for t in pending)} does not validate against the new {target.key} "
                f"for bootstrap token {ids}; is kube-controller-manager running with the bootstrapsigner controller?"
            )
        sleep(min(interval, remaining))
