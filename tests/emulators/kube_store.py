"""The object side of the Kubernetes API emulator: resource types, validation, the store.

Objects live in memory keyed by (group/version/resource, namespace, name); every write is
stamped with the next value of one counter, as etcd's revision becomes `resourceVersion`, and
a write naming another resourceVersion than the stored one is a 409 Conflict.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonpatch

Obj = dict[str, Any]
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# ---------------------------------------------------------------------------------- errors

REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           405: "MethodNotAllowed", 409: "Conflict", 415: "UnsupportedMediaType",
           422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable", 504: "Timeout"}


class ApiError(Exception):
    """An answer other than success, sent as a metav1.Status object."""

    def __init__(self, code: int, message: str, *, reason: str | None = None,
                 details: Obj | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details, self.headers = details, headers or {}

    def status(self) -> Obj:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            status["details"] = self.details
        return status


# ----------------------------------------------------------------------- resource types

def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def age(obj: Obj) -> str:
    created = datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    seconds = int((datetime.now(UTC).replace(tzinfo=None) - created).total_seconds())
    for unit, size, limit in (("s", 1, 120), ("m", 60, 3 * 3600), ("h", 3600, 48 * 3600)):
        if seconds < limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


Cause = tuple[str, str, Any]  # (field, message, value)


def replicas_causes(value: Any, field_path: str, minimum: int = 0) -> list[Cause]:
    if value is None:
        return []
    if not isinstance(value, int) or isinstance(value, bool):
        return [(field_path, "must be an integer", value)]
    if value < minimum:
        return [(field_path, f"must be greater than or equal to {minimum}", value)]
    return []


def validate_deployment(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes = replicas_causes(spec.get("replicas"), "spec.replicas")
    match = dig(spec, "selector.matchLabels")
    if not match and not dig(spec, "selector.matchExpressions"):
        causes.append(("spec.selector", "Required value", None))
    labels = dig(spec, "template.metadata.labels") or {}
    if match and any(labels.get(k) != v for k, v in match.items()):
        causes.append(("spec.template.metadata.labels",
                       "`selector` does not match template `labels`", labels))
    containers = dig(spec, "template.spec.containers") or []
    if not containers or any(not c.get("name") or not c.get("image") for c in containers):
        causes.append(("spec.template.spec.containers",
                       "Required value: every container needs a name and an image", None))
    return causes


def default_deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault("strategy", {"type": "RollingUpdate",
                                 "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})


def validate_hpa(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes = [(f"spec.scaleTargetRef.{key}", "Required value", None)
              for key in ("kind", "name") if not dig(spec, f"scaleTargetRef.{key}")]
    causes += replicas_causes(spec.get("minReplicas"), "spec.minReplicas", minimum=1)
    if spec.get("maxReplicas") is None:
        causes.append(("spec.maxReplicas", "Required value", None))
    causes += replicas_causes(spec.get("maxReplicas"), "spec.maxReplicas", minimum=1)
    return causes


def validate_lease(obj: Obj) -> list[Cause]:
    return replicas_causes(dig(obj, "spec.leaseDurationSeconds"),
                           "spec.leaseDurationSeconds", minimum=1)


def validate_event(obj: Obj) -> list[Cause]:
    involved = obj.get("involvedObject") or {}
    if involved.get("namespace", obj["metadata"]["namespace"]) != obj["metadata"]["namespace"]:
        return [("involvedObject.namespace", "does not match event.namespace",
                 involved.get("namespace"))]
    return []


@dataclass(frozen=True)
class Column:
    name: str
    cell: Callable[[Obj], Any]
    type: str = "string"


NAME = Column("Name", lambda o: o["metadata"]["name"])
AGE = Column("Age", age)


def count(path: str) -> Callable[[Obj], int]:
    return lambda o: dig(o, path) or 0


DEPLOYMENT_COLUMNS = (
    NAME,
    Column("Ready", lambda o: f"{dig(o, 'status.readyReplicas') or 0}/{dig(o, 'spec.replicas')}"),
    Column("Up-to-date", count("status.updatedReplicas"), "integer"),
    Column("Available", count("status.availableReplicas"), "integer"),
    AGE,
)


class Subresource:
    """A view of part of an object served at `.../{name}/{subresource}`."""

    name: str
    kind: tuple[str, str, str] | None = None  # (group, version, kind) when not the parent's

    def read(self, obj: Obj) -> Obj:
        raise NotImplementedError

    def write(self, obj: Obj, view: Obj) -> Obj:
        """The object once `view` (a read, changed by a client) is stored."""
        raise NotImplementedError


class ScaleView(Subresource):
    name, kind = "scale", ("autoscaling", "v1", "Scale")

    def read(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        selector = ",".join(f"{k}={v}" for k, v in
                            sorted((dig(obj, "spec.selector.matchLabels") or {}).items()))
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in
                             ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
                "spec": {"replicas": dig(obj, "spec.replicas")},
                "status": {"replicas": dig(obj, "status.replicas") or 0, "selector": selector}}

    def write(self, obj: Obj, view: Obj) -> Obj:
        causes = replicas_causes(dig(view, "spec.replicas"), "spec.replicas")
        if causes:
            raise invalid("Scale", "autoscaling", obj["metadata"]["name"], causes)
        obj["spec"]["replicas"] = dig(view, "spec.replicas") or 0
        return obj


class StatusView(Subresource):
    name = "status"

    def read(self, obj: Obj) -> Obj:
        return obj

    def write(self, obj: Obj, view: Obj) -> Obj:
        obj["status"] = view.get("status") or {}
        return obj


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    resource: str  # plural, as in URLs
    kind: str
    short_names: tuple[str, ...] = ()
    validate: Callable[[Obj], list[Cause]] = lambda obj: []
    default: Callable[[Obj], None] = lambda obj: None
    columns: tuple[Column, ...] = (NAME, AGE)
    subresources: tuple[Subresource, ...] = ()
    # Spec changes bump metadata.generation; writes to the object itself keep its status.
    has_status: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"

    @property
    def group_resource(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource

    def subresource(self, name: str) -> Subresource:
        for sub in self.subresources:
            if sub.name == name:
                return sub
        raise ApiError(404, f"the server could not find the requested resource "
                            f"({self.resource}/{name})")


RESOURCE_TYPES = (
    ResourceType("apps", "v1", "deployments", "Deployment", ("deploy",), validate_deployment,
                 default_deployment, DEPLOYMENT_COLUMNS, (ScaleView(), StatusView()), True),
    ResourceType("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler",
                 ("hpa",), validate_hpa, subresources=(StatusView(),), has_status=True),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", validate=validate_lease),
    ResourceType("", "v1", "events", "Event", ("ev",), validate_event),
)
BY_PATH = {(rt.prefix, rt.resource): rt for rt in RESOURCE_TYPES}
DEPLOYMENTS = RESOURCE_TYPES[0]


def find_type(resource: str) -> ResourceType:
    """A resource type by plural, kind or short name (as tests name them)."""
    for rt in RESOURCE_TYPES:
        if resource.lower() in (rt.resource, rt.kind.lower(), *rt.short_names):
            return rt
    raise KeyError(resource)


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{rt.group_resource} "{name}" not found',
                    details={"name": name, "group": rt.group, "kind": rt.resource})


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {rt.group_resource} "{name}": the '
                         "object has been modified; please apply your changes to the latest "
                         "version and try again",
                    details={"name": name, "group": rt.group, "kind": rt.resource})


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    qualified = f"{kind}.{group}" if group else kind
    lines = [f"{path}: Invalid value: {json.dumps(value)}: {msg}" if value is not None
             else f"{path}: {msg}" for path, msg, value in causes]
    return ApiError(422, f'{qualified} "{name}" is invalid: ' + ", ".join(lines),
                    details={"name": name, "group": group, "kind": kind,
                             "causes": [{"reason": "FieldValueInvalid", "field": path,
                                         "message": msg} for path, msg, _ in causes]})


# ---------------------------------------------------------------------------------- store

Key = tuple[str, str, str]  # ("group/version/resource", namespace, name)


class Store:
    """Objects by key, each write stamped with the next resourceVersion (thread-safe)."""

    def __init__(self, on_write: Callable[[ResourceType, Obj], None]):
        self._objects: dict[Key, Obj] = {}
        self._revision = 0
        self._lock = threading.RLock()
        self._on_write = on_write

    @staticmethod
    def key(rt: ResourceType, namespace: str, name: str) -> Key:
        return (f"{rt.group}/{rt.version}/{rt.resource}", namespace, name)

    @property
    def revision(self) -> str:
        return str(self._revision)

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        with self._lock:
            obj = self._objects.get(self.key(rt, namespace, name))
            if obj is None:
                raise not_found(rt, name)
            return copy.deepcopy(obj)

    def list(self, rt: ResourceType, namespace: str | None) -> list[Obj]:
        prefix = self.key(rt, "", "")[0]
        with self._lock:
            return [copy.deepcopy(obj) for (res, ns, _), obj in sorted(self._objects.items())
                    if res == prefix and namespace in (None, ns)]

    def create(self, rt: ResourceType, namespace: str, obj: Obj, *, commit: bool = True) -> Obj:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        if not DNS_SUBDOMAIN.match(name):
            raise invalid(rt.kind, rt.group, name, [("metadata.name", "Required value: a "
                          "lowercase RFC 1123 subdomain", name or None)])
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(400, "the namespace of the provided object does not match the "
                                "namespace sent on the request")
        obj.update(apiVersion=rt.api_version, kind=rt.kind)
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339())
        meta.pop("resourceVersion", None)
        if rt.has_status:
            meta["generation"] = 1
        rt.default(obj)
        with self._lock:
            if self.key(rt, namespace, name) in self._objects:
                raise ApiError(409, f'{rt.group_resource} "{name}" already exists',
                               reason="AlreadyExists",
                               details={"name": name, "group": rt.group, "kind": rt.resource})
            return self._commit(rt, obj, commit)

    def update(self, rt: ResourceType, namespace: str, name: str,
               change: Callable[[Obj], Obj], *, commit: bool = True) -> Obj:
        """Store `change(current)`, unless it names a resourceVersion other than current."""
        with self._lock:
            current = self.get(rt, namespace, name)
            new = change(copy.deepcopy(current))
            meta = new.setdefault("metadata", {})
            stored_version = current["metadata"]["resourceVersion"]
            if meta.get("resourceVersion") not in (None, "", stored_version):
                raise conflict(rt, name)
            if (meta.get("name"), meta.get("namespace", namespace)) != (name, namespace):
                raise ApiError(400, f"the name of the object ({meta.get('name')}) does not match "
                                    f"the name on the URL ({name})")
            for kept in ("uid", "creationTimestamp", "generation"):
                if kept in current["metadata"]:
                    meta[kept] = current["metadata"][kept]
            new.update(apiVersion=rt.api_version, kind=rt.kind)
            if rt.has_status and new.get("spec") != current.get("spec"):
                meta["generation"] = current["metadata"]["generation"] + 1
            return self._commit(rt, new, commit)

    def delete(self, rt: ResourceType, namespace: str, name: str, *, commit: bool = True) -> Obj:
        with self._lock:
            obj = self.get(rt, namespace, name)
            if commit:
                del self._objects[self.key(rt, namespace, name)]
            return obj

    def _commit(self, rt: ResourceType, obj: Obj, commit: bool) -> Obj:
        causes = rt.validate(obj)
        if causes:
            raise invalid(rt.kind, rt.group, obj["metadata"]["name"], causes)
        if commit:
            self._on_write(rt, obj)
            self._revision += 1
            obj["metadata"]["resourceVersion"] = self.revision
            self._objects[self.key(rt, obj["metadata"]["namespace"],
                                   obj["metadata"]["name"])] = copy.deepcopy(obj)
        return obj


# ---------------------------------------------------------------------------------- patches

def merge_patch(target: Any, patch: Any, *, merge_lists_by_name: bool = False) -> Any:
    """RFC 7386; with `merge_lists_by_name`, the strategic-merge treatment of object lists."""
    if merge_lists_by_name and _named_list(target) and _named_list(patch):
        merged = {item["name"]: item for item in target}
        for item in patch:
            merged[item["name"]] = merge_patch(merged.get(item["name"]), item,
                                               merge_lists_by_name=True)
        return list(merged.values())
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value,
                                      merge_lists_by_name=merge_lists_by_name)
    return result


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)


PATCHERS: dict[str, Callable[[Obj, Any], Obj]] = {
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json":
        lambda obj, patch: merge_patch(obj, patch, merge_lists_by_name=True),
    "application/json-patch+json": lambda obj, patch: jsonpatch.apply_patch(obj, patch),
}


def apply_patch(content_type: str, obj: Obj, patch: Any) -> Obj:
    patcher = PATCHERS.get(content_type.split(";")[0].strip())
    if patcher is None:
        raise ApiError(415, f"the body of the request was in an unknown format - accepted media "
                            f"types include: {', '.join(PATCHERS)}")
    try:
        patched = patcher(obj, patch)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as err:
        patched = err
    if not isinstance(patched, dict):
        raise ApiError(422, f"the server rejected our request due to an error in our request: "
                            f"{patched}")
    return patched


# ----------------------------------------------------------------------------- selectors

def selector_matches(selector: str, lookup: Callable[[str], Any]) -> bool:
    """Equality-based label/field selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-joined."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            ok = str(lookup(key.strip()) or "") != value.strip()
        elif "=" in term:
            key, value = re.split("==?", term, maxsplit=1)
            ok = str(lookup(key.strip()) or "") == value.strip()
        elif term.startswith("!"):
            ok = lookup(term[1:]) is None
        else:
            ok = lookup(term) is not None
        if not ok:
            return False
    return True


def selected(obj: Obj, query: dict[str, str]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return (selector_matches(query.get("labelSelector", ""), labels.get)
            and selector_matches(query.get("fieldSelector", ""), lambda path: dig(obj, path)))
