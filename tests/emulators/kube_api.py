"""A local emulator of the parts of the Kubernetes API the autoscaler uses.

No kube-apiserver can run on the test machines, so this aiohttp server plays one, faithfully
in what the `kubernetes` Python client and `kubectl` rely on:

- discovery (legacy and aggregated v2), `/version`, and OpenAPI v3 documents saying that
  writes take `fieldValidation`: kubectl then leaves validation to the server, which judges
  `fieldValidation=Strict` writes against the real schemas (kubernetes-validate);
- apps/v1 Deployments with their `scale` and `status` subresources, autoscaling/v2
  HorizontalPodAutoscalers, coordination.k8s.io/v1 Leases, core/v1 Events;
- get/list/create/update/patch/delete with Status errors as the real server words them:
  404 NotFound, 409 Conflict on a stale `resourceVersion` (one monotonic counter, as etcd's
  revision) and AlreadyExists, 422 Invalid, 400 BadRequest, 401 without the bearer token;
- JSON merge, strategic merge and JSON patches; `dryRun=All`; label and field selectors;
- Table answers for `kubectl get` (`Accept: ...;as=Table`);
- a deployment controller: status follows spec.replicas, pods turn ready after
  `ready_delay` seconds;
- injectable faults (status, Retry-After and other headers, delays for timeouts) and a record
  of every request, for tests to assert on.

Simplifications: every namespace exists; strategic merge merges lists of objects by `name`
and replaces other lists (no `$patch` directives); no watch, no server-side apply, no
OpenAPI v2; `fieldValidation=Warn` is taken as `Ignore`; list `limit` is ignored (no paging).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import re
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from aiohttp import web

from .kube_store import (
    BY_PATH,
    DEPLOYMENTS,
    RESOURCE_TYPES,
    ApiError,
    Obj,
    ResourceType,
    Store,
    Subresource,
    apply_patch,
    conflict,
    dig,
    find_type,
    merge_patch,
    selected,
)

SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-emulator",
                  "platform": "linux/amd64"}
SCHEMA_VERSION = "1.32"  # the Kubernetes release whose OpenAPI schemas judge strict writes


# ------------------------------------------------------------------------ faults and records

@dataclass
class Fault:
    """Answer matching requests with `status` (after `delay` s) instead of serving them.

    `status=None` only delays (a delay past the client's timeout is a timeout).
    `times=None` matches forever. `path` is a regex searched in the URL path.
    """

    status: int | None = None
    method: str | None = None
    path: str = ""
    times: int | None = 1
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    message: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.times is None or self.times > 0) and self.method in (None, method) \
            and re.search(self.path, path) is not None


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int
    at: float  # time.monotonic() when the request arrived


@dataclass(frozen=True)
class RequestInfo:
    """What a request is about, as kube-apiserver's RequestInfo (None for other paths)."""

    verb: str
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None

    def forbidden(self, user: str) -> ApiError:
        resource = self.rt.resource + (f"/{self.subresource}" if self.subresource else "")
        where = f' in the namespace "{self.namespace}"' if self.namespace else \
            " at the cluster scope"
        subject = f'{self.rt.group_resource} "{self.name}"' if self.name else self.rt.group_resource
        return ApiError(403, f'{subject} is forbidden: User "{user}" cannot {self.verb} resource '
                             f'"{resource}" in API group "{self.rt.group}"{where}',
                        details={"name": self.name or "", "group": self.rt.group,
                                 "kind": self.rt.resource})


# What kube-apiserver says with these codes.
FAULT_MESSAGES = {
    429: "Too many requests, please try again later.",
    500: "Internal error occurred: injected fault",
    503: "the server is currently unable to handle the request",
    504: "the server was unable to return a response in the time allotted, but may still be "
         "processing the request",
}
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
RESOURCE_PATH = re.compile(
    r"^(?P<prefix>/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/(?P<namespace>[^/]+))?"
    r"/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<subresource>[^/]+))?)?$")


def request_info(method: str, path: str, query: dict[str, str]) -> RequestInfo | None:
    match = RESOURCE_PATH.match(path)
    if not match or (match["prefix"], match["resource"]) not in BY_PATH:
        return None
    if method == "GET":
        verb = "get" if match["name"] else "list"
        if query.get("watch") in ("1", "true"):
            verb = "watch"
    else:
        verb = VERBS.get(method, method.lower())
    return RequestInfo(verb, BY_PATH[match["prefix"], match["resource"]], match["namespace"],
                       match["name"], match["subresource"])


@dataclass(frozen=True)
class Call:
    """One request to a resource path, decoded."""

    info: RequestInfo
    query: dict[str, str]
    body: Any
    content_type: str

    @property
    def commit(self) -> bool:
        return self.query.get("dryRun") != "All"

    @property
    def view(self) -> Subresource | None:
        return self.info.rt.subresource(self.info.subresource) if self.info.subresource else None

    def read(self, obj: Obj) -> Obj:
        """What the request's path shows of a stored object."""
        return self.view.read(obj) if self.view else obj

    def check_fields(self, obj: Obj) -> None:
        """`fieldValidation=Strict` (kubectl's default): unknown or mistyped fields are a 400,
        judged against the real OpenAPI schemas (kubernetes-validate)."""
        if self.query.get("fieldValidation") != "Strict":
            return
        try:
            kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path)
            raise ApiError(400, f'{obj.get("kind")} in version "{self.info.rt.version}" cannot be '
                                f"handled as a {obj.get('kind')}: strict decoding error: "
                                f"{where}: {err.message}") from None


# ------------------------------------------------------------------------------ discovery

def api_resources(rt: ResourceType) -> list[Obj]:
    """Legacy discovery entries (APIResource) of a type and its subresources."""
    main = {"name": rt.resource, "singularName": rt.kind.lower(), "namespaced": True,
            "kind": rt.kind, "shortNames": list(rt.short_names),
            "verbs": ["create", "delete", "get", "list", "patch", "update"]}
    subs = [{"name": f"{rt.resource}/{sub.name}", "singularName": "", "namespaced": True,
             "kind": sub.kind[2] if sub.kind else rt.kind, "verbs": ["get", "patch", "update"],
             **({"group": sub.kind[0], "version": sub.kind[1]} if sub.kind else {})}
            for sub in rt.subresources]
    return [main, *subs]


def aggregated_resource(rt: ResourceType) -> Obj:
    """Aggregated discovery entry (APIResourceDiscovery, apidiscovery.k8s.io/v2)."""
    def kind_of(group: str, version: str, kind: str) -> Obj:
        return {"group": group, "version": version, "kind": kind}

    return {"resource": rt.resource, "singularResource": rt.kind.lower(), "scope": "Namespaced",
            "responseKind": kind_of(rt.group, rt.version, rt.kind),
            "shortNames": list(rt.short_names),
            "verbs": ["create", "delete", "get", "list", "patch", "update"],
            "subresources": [{"subresource": sub.name, "verbs": ["get", "patch", "update"],
                              "responseKind": kind_of(*(sub.kind or
                                                        (rt.group, rt.version, rt.kind)))}
                             for sub in rt.subresources]}


def group_versions() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rt in RESOURCE_TYPES:
        versions = groups.setdefault(rt.group, [])
        if rt.version not in versions:
            versions.append(rt.version)
    return groups


def aggregated_discovery(core: bool) -> Obj:
    items = [{"metadata": {"name": group} if group else {},
              "versions": [{"version": version, "freshness": "Current",
                            "resources": [aggregated_resource(rt) for rt in RESOURCE_TYPES
                                          if (rt.group, rt.version) == (group, version)]}
                           for version in versions]}
             for group, versions in group_versions().items() if (group == "") == core]
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {}, "items": items}


AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def group_version_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_index() -> Obj:
    return {"paths": {group_version_path(g, v): {
        "serverRelativeURL": f"/openapi/v3/{group_version_path(g, v)}?hash={SCHEMA_VERSION}"}
        for g, versions in group_versions().items() for v in versions}}


def openapi_document(path: str) -> Obj:
    """A group-version's OpenAPI v3 document, as far as kubectl reads it: its PATCH operations
    take `fieldValidation`, so kubectl leaves field validation to the server."""
    types = [rt for rt in RESOURCE_TYPES if group_version_path(rt.group, rt.version) == path]
    if not types:
        raise ApiError(404, "the server could not find the requested resource")
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SCHEMA_VERSION},
            "paths": {f"{rt.prefix}/namespaces/{{namespace}}/{rt.resource}/{{name}}": {"patch": {
                "x-kubernetes-group-version-kind":
                    {"group": rt.group, "version": rt.version, "kind": rt.kind},
                "parameters": [{"name": "fieldValidation", "in": "query",
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}}}} for rt in types},
            "components": {"schemas": {}}}


# ------------------------------------------------------------------------------- the server

def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (kubectl sends no token over plain HTTP)."""
    cert, key = directory / "apiserver.crt", directory / "apiserver.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=kube-api-emulator",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


class KubeApi:
    """The emulator: object store, deployment controller, faults, request log, HTTP server."""

    def __init__(self, *, token: str = "emulator-token", user: str = "system:serviceaccount:"
                 "vllm-autoscaler:controller", ready_delay: float = 0.0):
        self.token, self.user = token, user
        self.ready_delay = ready_delay  # seconds until new pods are ready
        self.store = Store(on_write=self._reconcile)
        self.faults: list[Fault] = []
        self.requests: list[Recorded] = []
        self.base_url = ""
        self.kubeconfig: Path | None = None
        self._tls_dir = tempfile.TemporaryDirectory(prefix="kube-api-emulator-")
        self.ca_cert, self._key = self_signed_certificate(Path(self._tls_dir.name))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._routes: list[tuple[re.Pattern[str], Callable[..., Obj]]] = [
            (re.compile(p), h) for p, h in (
                (r"^/version$", lambda req, m: SERVER_VERSION),
                (r"^/api$", self._core_versions),
                (r"^/apis$", self._groups),
                (r"^/(?:api/(?P<cv>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))$",
                 self._resource_list),
                (r"^/openapi/v3$", lambda req, m: openapi_index()),
                (r"^/openapi/v3/(?P<path>apis?/.+)$", lambda req, m: openapi_document(m["path"])),
            )]

    # --- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=16 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Handlers held by a delay fault are cut short at shutdown.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.ca_cert, self._key)
        await web.TCPSite(self._runner, host, port, ssl_context=tls).start()
        self.base_url = f"https://{host}:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._tls_dir.cleanup()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {
                "server": self.base_url,
                "certificate-authority-data": base64.b64encode(self.ca_cert.read_bytes()).decode(),
            }}],
            "users": [{"name": "controller", "user": {"token": self.token}}],
            "contexts": [{"name": "emulator", "context": {
                "cluster": "emulator", "user": "controller", "namespace": namespace}}],
        }
        path.write_text(yaml.safe_dump(config))
        self.kubeconfig = path
        return path

    # --- test helpers (callable from any thread)

    def inject(self, status: int | None = None, **kwargs: Any) -> Fault:
        fault = Fault(status, **kwargs)
        self.faults.append(fault)
        return fault

    def recorded(self, method: str | None = None, path: str = "") -> list[Recorded]:
        return [r for r in list(self.requests)
                if method in (None, r.method) and re.search(path, r.path)]

    def create(self, resource: str, obj: Obj, namespace: str = "default") -> Obj:
        return self.store.create(find_type(resource), namespace, copy.deepcopy(obj))

    def get(self, resource: str, name: str, namespace: str = "default") -> Obj:
        return self.store.get(find_type(resource), namespace, name)

    def list(self, resource: str, namespace: str | None = None) -> list[Obj]:
        return self.store.list(find_type(resource), namespace)

    def patch(self, resource: str, name: str, patch: Obj, namespace: str = "default") -> Obj:
        """A JSON merge patch, as another client would send (status included)."""
        return self.store.update(find_type(resource), namespace, name,
                                 lambda obj: merge_patch(obj, patch))

    def add_deployment(self, name: str, replicas: int = 1, namespace: str = "default") -> Obj:
        labels = {"app": name}
        return self.create("deployments", {
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                         {"name": "vllm", "image": "vllm/vllm-openai:latest"}]}}},
        }, namespace)

    def add_hpa(self, name: str, deployment: str, namespace: str = "default") -> Obj:
        return self.create("horizontalpodautoscalers", {
            "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": deployment},
                     "minReplicas": 1, "maxReplicas": 4},
        }, namespace)

    # --- the deployment controller

    def _reconcile(self, rt: ResourceType, obj: Obj) -> None:
        """Status of a Deployment being written: replicas follow spec, readiness comes later."""
        if rt is not DEPLOYMENTS:
            return
        desired = obj["spec"]["replicas"]
        status = obj.get("status") or {}
        ready = min(status.get("readyReplicas", 0), desired)
        if ready < desired and self.ready_delay <= 0:
            ready = desired
        elif ready < desired:
            meta = obj["metadata"]
            self._later(self.ready_delay, self._mark_ready, meta["namespace"], meta["name"])
        obj["status"] = {k: v for k, v in {
            "observedGeneration": obj["metadata"].get("generation"), "replicas": desired,
            "updatedReplicas": desired, "readyReplicas": ready, "availableReplicas": ready,
            "unavailableReplicas": desired - ready}.items() if v}  # zero fields are omitted

    def _later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None, "the emulator is not started"
        self._loop.call_soon_threadsafe(self._loop.call_later, delay, fn, *args)

    def _mark_ready(self, namespace: str, name: str) -> None:
        def ready(obj: Obj) -> Obj:
            obj["status"]["readyReplicas"] = obj["spec"]["replicas"]  # _reconcile does the rest
            return obj

        with contextlib.suppress(ApiError):  # deleted meanwhile
            self.store.update(DEPLOYMENTS, namespace, name, ready)

    # --- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await self._body(request)
        query = dict(request.query)
        try:
            response = await self._serve(request, query, body)
        except ApiError as err:
            response = web.json_response(err.status(), status=err.code, headers=err.headers)
        self.requests.append(Recorded(request.method, request.path, query, dict(request.headers),
                                      body, response.status, arrived))
        return response

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    async def _serve(self, request: web.Request, query: dict[str, str], body: Any) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token != self.token:  # schemes are case-insensitive
            raise ApiError(401, "Unauthorized")
        info = request_info(request.method, request.path, query)
        await self._apply_faults(request.method, request.path, info)
        accept = request.headers.get("Accept", "")
        if info is not None:
            result = self._resource(
                Call(info, query, body, request.headers.get("Content-Type", "")))
            if "as=Table" in accept and info.verb in ("get", "list") and not info.subresource:
                result = self._table(info.rt, result)
            return web.json_response(result, status=201 if info.verb == "create" else 200)
        for pattern, handler in self._routes:
            if match := pattern.match(request.path):
                if request.method != "GET":
                    raise ApiError(405, f"{request.method} is not allowed on {request.path}")
                result = handler(request, match)
                if result.get("kind") in ("APIVersions", "APIGroupList") and \
                        "as=APIGroupDiscoveryList" in accept:
                    return web.json_response(aggregated_discovery(request.path == "/api"),
                                             content_type=None,
                                             headers={"Content-Type": AGGREGATED})
                return web.json_response(result)
        raise ApiError(404, "the server could not find the requested resource")

    async def _apply_faults(self, method: str, path: str, info: RequestInfo | None) -> None:
        fault = next((f for f in list(self.faults) if f.matches(method, path)), None)
        if fault is None:
            return
        if fault.times is not None:
            fault.times -= 1
        await asyncio.sleep(fault.delay)
        if fault.status is None:
            return
        if fault.status == 403 and info is not None:
            error = info.forbidden(self.user)
        elif fault.status == 409 and info is not None and info.name:
            error = conflict(info.rt, info.name)
        else:
            error = ApiError(fault.status, FAULT_MESSAGES.get(fault.status,
                                                              f"injected fault on {method} {path}"))
        error.headers = dict(fault.headers)
        if fault.message:
            error.message = fault.message
        raise error

    def _resource(self, call: Call) -> Obj:
        handlers: dict[str, Callable[[Call], Obj]] = {
            "list": self._list, "get": self._get, "create": self._create,
            "update": self._write, "patch": self._write, "delete": self._delete}
        info = call.info
        if info.verb not in handlers or (info.name is None) != (info.verb in ("list", "create")):
            raise ApiError(405, f"{info.verb} is not supported on this path")
        if info.namespace is None and info.verb != "list":
            raise ApiError(404, "the server could not find the requested resource")
        return handlers[info.verb](call)

    def _list(self, call: Call) -> Obj:
        rt = call.info.rt
        items = [o for o in self.store.list(rt, call.info.namespace) if selected(o, call.query)]
        for item in items:
            del item["apiVersion"], item["kind"]
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": self.store.revision}, "items": items}

    def _get(self, call: Call) -> Obj:
        info = call.info
        return call.read(self.store.get(info.rt, info.namespace, info.name))

    def _create(self, call: Call) -> Obj:
        if not isinstance(call.body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        call.check_fields(call.body)
        return self.store.create(call.info.rt, call.info.namespace, call.body,
                                 commit=call.commit)

    def _delete(self, call: Call) -> Obj:
        rt, name = call.info.rt, call.info.name
        self.store.delete(rt, call.info.namespace, name, commit=call.commit)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": rt.group, "kind": rt.resource}}

    def _write(self, call: Call) -> Obj:
        """An update (PUT) or a patch of an object or of one of its subresources."""
        info, view = call.info, call.view
        if not isinstance(call.body, (dict, list)):
            raise ApiError(400, "the request body must be JSON")

        def change(current: Obj) -> Obj:
            incoming = call.body if info.verb == "update" else apply_patch(
                call.content_type, call.read(copy.deepcopy(current)), call.body)
            call.check_fields(incoming)
            if view:
                written = view.write(current, incoming)
                written["metadata"]["resourceVersion"] = dig(incoming, "metadata.resourceVersion")
                return written
            if info.rt.has_status:  # status is only written through the status subresource
                incoming = {**incoming, "status": current.get("status")}
            return incoming

        return call.read(self.store.update(info.rt, info.namespace, info.name, change,
                                           commit=call.commit))

    @staticmethod
    def _table(rt: ResourceType, result: Obj) -> Obj:
        objects = result.get("items", [result])
        return {
            "kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": result["metadata"].get("resourceVersion", "")},
            "columnDefinitions": [{"name": c.name, "type": c.type, "format": "",
                                   "description": c.name, "priority": 0} for c in rt.columns],
            "rows": [{"cells": [c.cell(o) for c in rt.columns],
                      "object": {"kind": "PartialObjectMetadata",
                                 "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}}
                     for o in objects],
        }

    # --- discovery

    def _core_versions(self, request: web.Request, match: re.Match[str]) -> Obj:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}]}

    def _groups(self, request: web.Request, match: re.Match[str]) -> Obj:
        def gv(group: str, version: str) -> Obj:
            return {"groupVersion": f"{group}/{version}", "version": version}

        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": group, "versions": [gv(group, v) for v in versions],
             "preferredVersion": gv(group, versions[0])}
            for group, versions in group_versions().items() if group]}

    def _resource_list(self, request: web.Request, match: re.Match[str]) -> Obj:
        group, version = (match["group"] or "", match["version"] or match["cv"])
        types = [rt for rt in RESOURCE_TYPES if (rt.group, rt.version) == (group, version)]
        if not types:
            raise ApiError(404, "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": types[0].api_version,
                "resources": [entry for rt in types for entry in api_resources(rt)]}


@contextmanager
def running_kube_api(**kwargs: Any) -> Iterator[KubeApi]:
    """A started emulator on 127.0.0.1 (random port), served by its own loop in a thread."""
    api = KubeApi(**kwargs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kube-api-emulator", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(api.start(), loop).result(timeout=10)
        yield api
    finally:
        asyncio.run_coroutine_threadsafe(api.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
