# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the kubeha.apiserver collection: this is NOT a public API. It backs the collection's
# modules that talk to kube-apiserver and may change in any release without notice.

"""A small Kubernetes REST client: kubeconfig loading, JSON requests, optimistic updates.

Only the standard library is used for HTTP and TLS. PyYAML (for the kubeconfig) is imported lazily by
``import_yaml`` so that this file imports without it and a module can report ``missing_required_lib``.
Everything here raises ``KubeAPIError`` with a message meant for the user as is.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import os
import ssl
import tempfile
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeconfig import (
    KubeconfigError,
    embedded_data,
    load_selection,
)

USER_AGENT = "kubeha.apiserver"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
JSON_CONTENT = "application/json"

# HTTP method -> Kubernetes API verb (as RBAC and the apiserver's messages name it).
VERBS = {"GET": "get", "PUT": "update", "PATCH": "patch", "POST": "create", "DELETE": "delete"}
STATUS_WORDS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    409: "conflict",
    422: "invalid",
    429: "too many requests",
}
MAX_MESSAGE = 500


class KubeAPIError(Exception):
    """The one error of this domain; ``status`` is the HTTP status when the apiserver answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MissingLibraryError(KubeAPIError):
    """A required Python library (PyYAML) cannot be imported."""

    def __init__(self, library: str, import_traceback: str) -> None:
        super().__init__(f"cannot import {library}")
        self.library = library
        self.import_traceback = import_traceback


def import_yaml() -> Any:
    """The ``yaml`` module (PyYAML), or ``MissingLibraryError``."""
    try:
        import yaml  # here, so that this file imports without PyYAML
    except ImportError as exc:
        raise MissingLibraryError("PyYAML", traceback.format_exc()) from exc
    return yaml


# --------------------------------------------------------------------------------------------------
# kubeconfig
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What is needed to reach and authenticate to one apiserver; ``source`` names the kubeconfig."""

    server: str
    source: str = "credentials"
    ca_data: bytes | None = field(default=None, repr=False)
    client_cert: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    insecure: bool = False


def _material(path: str, where: str, entry: Mapping[str, Any], key: str, files: Mapping[str, str]) -> bytes | None:
    """The bytes of ``<key>-data`` (base64) or of the file ``<key>``; ``None`` when neither is set.

    ``files`` holds the entry's file names resolved against the kubeconfig's directory (``referenced_files``).
    """
    try:
        data = embedded_data(entry, key, f"{path}: {where}")
    except KubeconfigError as exc:
        raise KubeAPIError(str(exc)) from exc
    if data is not None:
        return data
    full = files.get(key)
    if full:
        try:
            with open(full, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise KubeAPIError(f"{path}: cannot read {where}.{key} {full}: {exc.strerror or exc}") from exc
    return None


# The modules' option that lets a kubeconfig reach an apiserver it does not verify (doc fragment kubeconfig_security).
KUBECONFIG_SECURITY_SPEC: dict[str, dict[str, Any]] = {"allow_insecure": {"type": "bool", "default": False}}
# The connection options of every module that talks to the apiserver with a kubeconfig: the file whose current
# context is used, and allow_insecure (doc fragments kubeconfig_connection and kubeconfig_security). A module whose
# kubeconfig is not a connection (kubeconfig_server's is the file it edits) takes KUBECONFIG_SECURITY_SPEC alone.
KUBECONFIG_CONNECTION_SPEC: dict[str, dict[str, Any]] = {
    "kubeconfig": {"type": "path", "default": "/etc/kubernetes/admin.conf"},
    **KUBECONFIG_SECURITY_SPEC,
}


def load_kubeconfig(path: str, context: str | None = None, *, allow_insecure: bool = False) -> Credentials:
    """The credentials of ``context`` (default: ``current-context``) in the kubeconfig file ``path``.

    The context, its cluster and its user are the ones ``_kubeconfig.select`` picks (a name used twice is refused).
    Supports a client certificate and key (``client-certificate-data``/``client-key-data`` or file
    paths) and bearer tokens (``token`` or ``tokenFile``), the CA as ``certificate-authority-data`` or
    a file. An ``http://`` server, ``insecure-skip-tls-verify`` or a cluster without a CA is refused unless
    ``allow_insecure``: the credentials would go to whoever answers. Credential plugins (``exec``,
    ``auth-provider``), basic auth, ``proxy-url`` and ``tls-server-name`` are refused with a clear error.
    """
    try:
        selection, files = load_selection(path, context, import_yaml())
    except KubeconfigError as exc:
        raise KubeAPIError(str(exc)) from exc
    cluster, user = selection.cluster, selection.user or {}

    where = f"clusters[{selection.cluster_name}]"
    server = cluster.get("server")
    if not server or not isinstance(server, str):
        raise KubeAPIError(f"{path}: {where} has no server")
    if urllib.parse.urlsplit(server).scheme not in ("https", "http"):
        raise KubeAPIError(f"{path}: {where}.server {server!r} is not an https:// URL")
    for unsupported in ("proxy-url", "tls-server-name"):
        if cluster.get(unsupported):
            raise KubeAPIError(f"{path}: {where}.{unsupported} is not supported by this module")
    insecure = cluster.get("insecure-skip-tls-verify") is True
    ca_data = _material(path, where, cluster, "certificate-authority", files)
    if not allow_insecure:
        unverified = (
            f"{where}.server {server!r} is plain HTTP"
            if urllib.parse.urlsplit(server).scheme == "http"
            else f"{where} sets insecure-skip-tls-verify"
            if insecure
            else f"{where} has no certificate-authority-data or certificate-authority"
            if not ca_data
            else ""
        )
        if unverified:
            raise KubeAPIError(
                f"{path}: {unverified}: the apiserver could not be verified, so its credentials would go to whoever "
                "answers; refused (allow_insecure: true accepts it)"
            )

    where = f"users[{selection.user_name}]"
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise KubeAPIError(
                f"{path}: {where} uses an {plugin} credential plugin, which is not supported: use a kubeconfig "
                "with a client certificate or a token, such as /etc/kubernetes/admin.conf"
            )
    if user.get("username") or user.get("password"):
        raise KubeAPIError(f"{path}: {where} uses basic authentication, which Kubernetes no longer supports")
    client_cert = _material(path, where, user, "client-certificate", files)
    client_key = _material(path, where, user, "client-key", files)
    if client_cert and not client_key:
        raise KubeAPIError(f"{path}: {where} has a client certificate but no client-key-data or client-key")
    if client_key and not client_cert:
        raise KubeAPIError(f"{path}: {where} has a client key but no client-certificate-data or client-certificate")
    token = user.get("token")
    full = files.get("tokenFile")
    if not token and full:
        try:
            with open(full, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise KubeAPIError(f"{path}: cannot read {where}.tokenFile {full}: {exc.strerror or exc}") from exc
        if not token:
            raise KubeAPIError(f"{path}: {where}.tokenFile {full} is empty")
    if not client_cert and not token:
        raise KubeAPIError(
            f"{path}: {where} has no credentials: client-certificate-data and client-key-data "
            "(or client-certificate and client-key), token or tokenFile is required"
        )
    return Credentials(
        server=server.rstrip("/"),
        source=path,
        ca_data=ca_data,
        client_cert=client_cert,
        client_key=client_key,
        token=str(token) if token else None,
        insecure=insecure,
    )


# --------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------


def describe_path(path: str) -> str:
    """``configmaps kube-system/kube-proxy`` or ``daemonsets.apps kube-system/kube-proxy`` for an API path."""
    parts = [p for p in urllib.parse.urlsplit(path).path.split("/") if p]
    group = ""
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return path
    rest = [urllib.parse.unquote(p) for p in rest]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return f"namespace {namespace}" if namespace else path
    resource = rest[0] + (f".{group}" if group else "")
    if len(rest) >= 3:
        resource += "/" + "/".join(rest[2:])
    if len(rest) == 1:
        return f"{resource} in namespace {namespace}" if namespace else resource
    name = f"{namespace}/{rest[1]}" if namespace else rest[1]
    return f"{resource} {name}"


def _verb(method: str, path: str) -> str:
    parts = [p for p in urllib.parse.urlsplit(path).path.split("/") if p]
    if method == "GET":
        # .../<resource> is a list, .../<resource>/<name> a get; namespaces/<ns> alone is a get too
        core = parts[2:] if parts[:1] == ["api"] else parts[3:]
        if len(core) >= 3 and core[0] == "namespaces":
            core = core[2:]
        if len(core) == 1:
            return "list"
    return VERBS.get(method, method.lower())


def _apiserver_message(body: bytes, reason: str) -> str:
    """The ``message`` of a ``Status`` answer, or the start of the body, or the HTTP reason."""
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, Mapping) and doc.get("message"):
        return str(doc["message"])
    if text:
        return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."
    return reason or "no message"


def error_for_status(method: str, path: str, status: int, body: bytes, reason: str = "") -> KubeAPIError:
    """``forbidden: cannot patch daemonsets.apps kube-system/kube-proxy: <apiserver message>``."""
    word = STATUS_WORDS.get(status, f"HTTP {status}")
    message = _apiserver_message(body, reason)
    return KubeAPIError(f"{word}: cannot {_verb(method, path)} {describe_path(path)}: {message}", status)


def _no_password() -> bytes:
    raise KubeAPIError("the client key is encrypted, which is not supported")


@contextlib.contextmanager
def memory_files(*contents: bytes) -> Iterator[list[str]]:
    """File names ``ssl`` can open for ``contents`` (``load_cert_chain`` takes only names), for the ``with`` block.

    On Linux each is an anonymous memory file (``memfd_create``) named by its ``/proc/self/fd`` path: a private key
    never reaches a disk or a directory another process could list. Elsewhere (a controller that is not Linux) a
    private temporary directory (mode 0700, files 0600), removed when the block ends.
    """
    if hasattr(os, "memfd_create"):
        opened: list[int] = []
        try:
            for data in contents:
                fd = os.memfd_create("kubeha-credential", os.MFD_CLOEXEC)
                opened.append(fd)
                os.write(fd, data)
            yield [f"/proc/self/fd/{fd}" for fd in opened]
        finally:
            for fd in opened:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="kubeha-kubeapi-") as directory:
        names = []
        for index, data in enumerate(contents):
            name = os.path.join(directory, str(index))
            with os.fdopen(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                handle.write(data)
            names.append(name)
        yield names


class KubeClient:
    """JSON requests to one apiserver. Use as a context manager, or call ``close()``.

    The client certificate and key reach ``ssl`` through ``memory_files``: no file on a disk ever holds the key
    (the guard builds a client at every discovery call). Proxy variables of the environment are ignored: the
    apiserver is always reached directly.
    """

    def __init__(self, credentials: Credentials, timeout: float = 10, server_override: str | None = None) -> None:
        self.credentials = credentials
        self.server = (server_override or credentials.server).rstrip("/")
        self.timeout = timeout
        handlers: list[Any] = [urllib.request.ProxyHandler({})]
        if urllib.parse.urlsplit(self.server).scheme == "https":
            handlers.append(urllib.request.HTTPSHandler(context=self._ssl_context()))
        self._opener: Any = urllib.request.build_opener(*handlers)

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is held between requests (each opens its own connection); kept for the ``with`` statement."""

    def _ssl_context(self) -> ssl.SSLContext:
        creds = self.credentials
        try:
            if creds.ca_data:
                context = ssl.create_default_context(cadata=creds.ca_data.decode("ascii", "replace"))
            else:
                context = ssl.create_default_context()
        except (ssl.SSLError, ValueError) as exc:
            raise KubeAPIError(
                f"{creds.source}: the certificate authority is not a valid PEM certificate: {exc}"
            ) from exc
        if creds.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if creds.client_cert and creds.client_key:
            try:
                with memory_files(creds.client_cert, creds.client_key) as (cert, key):
                    context.load_cert_chain(cert, key, password=_no_password)
            except ssl.SSLError as exc:
                raise KubeAPIError(f"{creds.source}: the client certificate or key is not valid: {exc}") from exc
        return context

    # The one method that performs I/O (replaced in unit tests).
    def _send(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """``(status, body, reason)`` for any HTTP answer; connection problems raise ``OSError``/``URLError``."""
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read(), str(response.reason or "")
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read() or b""
            finally:
                exc.close()
            return exc.code, body, str(exc.reason or "")

    def request(self, method: str, path: str, body: Any = None, content_type: str = JSON_CONTENT) -> dict[str, Any]:
        """Send one request; the decoded JSON answer, or ``KubeAPIError`` naming the verb and resource."""
        headers = {"Accept": JSON_CONTENT, "User-Agent": USER_AGENT}
        if self.credentials.token:
            headers["Authorization"] = f"Bearer {self.credentials.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = content_type
        try:
            status, payload, reason = self._send(method, self.server + path, data, headers)
        except urllib.error.URLError as exc:
            raise KubeAPIError(f"cannot reach the apiserver at {self.server}: {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise KubeAPIError(f"cannot reach the apiserver at {self.server}: {exc or type(exc).__name__}") from exc
        if not 200 <= status < 300:
            raise error_for_status(method, path, status, payload, reason)
        if not payload.strip():
            return {}
        try:
            answer = json.loads(payload.decode("utf-8"))
        except ValueError as exc:
            raise KubeAPIError(
                f"cannot {_verb(method, path)} {describe_path(path)}: the apiserver at {self.server} "
                "did not answer with JSON"
            ) from exc
        if not isinstance(answer, dict):
            raise KubeAPIError(f"cannot {_verb(method, path)} {describe_path(path)}: unexpected answer {answer!r}")
        return answer

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def put(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PUT", path, body)

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Mapping[str, Any], content_type: str = STRATEGIC_MERGE_PATCH) -> dict[str, Any]:
        return self.request("PATCH", path, body, content_type)

    def delete(self, path: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """DELETE the object at ``path``; ``options`` is a ``DeleteOptions`` body (``preconditions``...)."""
        return self.request("DELETE", path, options)


def connect(kubeconfig: str, allow_insecure: bool = False) -> KubeClient:
    """A client with the credentials of the current context of the kubeconfig file ``kubeconfig``."""
    return KubeClient(load_kubeconfig(kubeconfig, allow_insecure=allow_insecure))


def client_factory(params: Mapping[str, Any], make_client: Callable[..., Any] = connect) -> Callable[[], Any]:
    """The client factory a module's run takes, from the connection options (``KUBECONFIG_CONNECTION_SPEC``).

    ``make_client(kubeconfig, allow_insecure)`` is called only when the run asks, after it validated its input.
    """
    return lambda: make_client(params["kubeconfig"], params["allow_insecure"])


# --------------------------------------------------------------------------------------------------
# Helpers built on get/put/patch (they accept any object with those methods)
# --------------------------------------------------------------------------------------------------


def object_path(api: str, namespace: str, resource: str, name: str) -> str:
    """``/api/v1/namespaces/<ns>/<resource>/<name>`` (``api`` is ``/api/v1`` or ``/apis/<group>/<version>``)."""
    quote = urllib.parse.quote
    return f"{api}/namespaces/{quote(namespace, safe='')}/{resource}/{quote(name, safe='')}"


def daemonset_path(namespace: str, name: str) -> str:
    return object_path("/apis/apps/v1", namespace, "daemonsets", name)


def update_with_retry(
    client: Any,
    path: str,
    mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
    attempts: int = 5,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """GET, ``mutate`` a deep copy, PUT it with the object's ``resourceVersion``; ``(before, after)``.

    A 409 (someone else changed the object in between) starts over from a fresh GET, up to
    ``attempts`` times. When ``mutate`` returns ``None`` there is nothing to do: no PUT, and ``after``
    is ``before``.
    """
    if attempts < 1:
        raise KubeAPIError(f"attempts must be at least 1, not {attempts}")
    last: KubeAPIError | None = None
    for _attempt in range(attempts):
        current = client.get(path)
        candidate = mutate(copy.deepcopy(current))
        if candidate is None:
            return current, current
        version = (current.get("metadata") or {}).get("resourceVersion")
        if not version:
            raise KubeAPIError(f"cannot update {describe_path(path)}: the object has no metadata.resourceVersion")
        candidate.setdefault("metadata", {})["resourceVersion"] = version
        try:
            return current, client.put(path, candidate)
        except KubeAPIError as exc:
            if exc.status != 409:
                raise
            last = exc
    raise KubeAPIError(
        f"cannot update {describe_path(path)}: it kept being changed by someone else ({attempts} conflicts); "
        f"last: {last}",
        409,
    )
