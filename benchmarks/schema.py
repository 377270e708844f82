"""The result-row JSON schema (``results.schema.json``) and a validator.

`validate` uses the ``jsonschema`` package when it is installed; otherwise a small built-in validator for the
keywords the schema uses (type, const, enum, required, properties, additionalProperties, items, minimum, anyOf,
local ``$ref``), so the benchmark and its test need no extra dependency.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parent / "results.schema.json"

_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}


class SchemaError(ValueError):
    """A row that does not match the schema; the message gives the JSON path."""


@cache
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise SchemaError(f"only local $ref supported, got {ref}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> None:
    if "$ref" in schema:
        _check(value, _resolve(schema["$ref"], root), root, path)
    if "anyOf" in schema:
        errors = []
        for sub in schema["anyOf"]:
            try:
                _check(value, sub, root, path)
                break
            except SchemaError as e:
                errors.append(str(e))
        else:
            raise SchemaError(f"{path}: matches none of anyOf: {'; '.join(errors)}")
    if "const" in schema and value != schema["const"]:
        raise SchemaError(f"{path}: {value!r} != const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{path}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            raise SchemaError(f"{path}: {type(value).__name__} {value!r:.80} is not {' or '.join(types)}")
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        raise SchemaError(f"{path}: {value} < minimum {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise SchemaError(f"{path}: missing required {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{path}.{key}")
            elif extra is False:
                raise SchemaError(f"{path}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{path}[{i}]")


def validate(row: dict[str, Any]) -> None:
    """Raise `SchemaError` unless ``row`` matches ``results.schema.json``."""
    schema = load_schema()
    try:
        import jsonschema
    except ImportError:
        _check(row, schema, schema, "$")
        return
    try:
        jsonschema.validate(row, schema)
    except jsonschema.ValidationError as e:
        raise SchemaError(f"$.{'.'.join(map(str, e.absolute_path))}: {e.message}") from e
