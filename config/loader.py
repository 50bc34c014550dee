"""Load a YAML config, apply Helm-style `--set a.b.c=value` overrides, validate it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .schema import Config


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the field and the value."""


DEFAULT_CONFIG = "default.yaml"


def shipped_path(name: str) -> Path:
    """Path of a file shipped in the config package (default.yaml, examples/, profiles/)."""
    return Path(str(resources.files(__package__).joinpath(name)))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    source = Path(path) if path else shipped_path(DEFAULT_CONFIG)
    data = read_yaml_mapping(source)
    for item in overrides or []:
        apply_override(data, item)
    return validate_config(data, str(source))


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - PyYAML's constructors raise more than YAMLError
        # (bad dates, `!!float x`, an empty `!!float`): any failure to parse is not YAML
        raise ConfigError(f"{path}: not valid YAML: {exc!s} ({type(exc).__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """`a.b.c=value`; list items by index (`targets.0.slo.ttft_seconds=1.5`); YAML values."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except Exception as exc:  # noqa: BLE001 - as in read_yaml_mapping
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc!s} "
                          f"({type(exc).__name__})") from None
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {item!r}: {where} is not an index of a list of {len(node)}")
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[:depth])} is not a mapping")
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                # Lists default to one entry (targets); materialise it so paths can index it.
                node[part] = [{}] if part == "targets" else {}
            node = node[part]


def validate_config(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid config:\n{format_errors(exc)}") from None


def format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        bad = err.get("input")
        shown = "" if isinstance(bad, dict) else f" (got {bad!r})"
        lines.append(f"  {where}: {err['msg']}{shown}")
    return "\n".join(lines)
