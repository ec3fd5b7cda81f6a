"""The API reference as /docs shows it, read from the OpenAPI schema: per endpoint, its
parameters and request body with their types spelled out (enum values listed, references
followed), an example body, and what it answers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]


@dataclass(frozen=True)
class Field:
    name: str
    where: str  # query, path, body
    type: str
    required: bool
    about: str
    default: str | None = None


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    description: str
    fields: list[Field] = field(default_factory=list)
    body_name: str | None = None
    example: str | None = None
    answers: str = ""


def endpoints(openapi: Schema) -> list[Endpoint]:
    components: Schema = openapi.get("components", {}).get("schemas", {})
    found: list[Endpoint] = []
    for path, operations in openapi.get("paths", {}).items():
        for method, op in operations.items():
            fields = [
                Field(
                    p["name"],
                    p["in"],
                    type_text(p.get("schema", {}), components),
                    bool(p.get("required")),
                    p.get("description") or p.get("schema", {}).get("description", ""),
                    _default(p.get("schema", {})),
                )
                for p in op.get("parameters", [])
            ]
            body_name = example = None
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                schema = body.get("schema", {})
                # An optional body is anyOf [the model, null]: document the model.
                schema = next((s for s in schema.get("anyOf", []) if "$ref" in s), schema)
                ref = _ref_name(schema)
                target = _resolve(schema, components)
                body_name = ref or "object"
                required = set(target.get("required", []))
                for name, spec in target.get("properties", {}).items():
                    fields.append(
                        Field(
                            name,
                            "body",
                            type_text(spec, components),
                            name in required,
                            spec.get("description", ""),
                            _default(spec),
                        )
                    )
                examples = target.get("examples")
                if examples:
                    example = json.dumps(examples[0], indent=2)
            found.append(
                Endpoint(
                    method,
                    path,
                    op.get("summary", ""),
                    op.get("description", ""),
                    fields,
                    body_name,
                    example,
                    _answers(op, components),
                )
            )
    return found


def type_text(spec: Schema, components: Schema, depth: int = 0) -> str:
    """A schema in a few words: ``string``, ``integer ≥ 1``, ``one of: newest | oldest``,
    ``list of string``, ``ResultFilters``..."""
    if depth > 4:
        return "…"
    if "$ref" in spec:
        target = _resolve(spec, components)
        if "enum" in target:
            return "one of: " + " | ".join(str(v) for v in target["enum"])
        return _ref_name(spec) or "object"
    if "enum" in spec:
        return "one of: " + " | ".join(str(v) for v in spec["enum"])
    if "const" in spec:
        return json.dumps(spec["const"])
    for key in ("anyOf", "oneOf"):
        if key in spec:
            parts = [type_text(s, components, depth + 1) for s in spec[key]]
            nullable = "null" in parts
            text = " or ".join(p for p in parts if p != "null")
            return f"{text} (optional)" if nullable else text
    kind = spec.get("type", "")
    if kind == "array":
        return f"list of {type_text(spec.get('items', {}), components, depth + 1)}"
    bounds = [
        f"{symbol} {spec[key]}"
        for key, symbol in (
            ("minimum", "≥"),
            ("exclusiveMinimum", ">"),
            ("maximum", "≤"),
            ("exclusiveMaximum", "<"),
        )
        if key in spec
    ]
    if "maxLength" in spec:
        bounds.append(f"≤ {spec['maxLength']} characters")
    if "pattern" in spec:
        bounds.append(f"matching {spec['pattern']}")
    return " ".join([kind or "any", *bounds]) if bounds else (kind or "any")


def _answers(op: Schema, components: Schema) -> str:
    for code, response in op.get("responses", {}).items():
        if str(code).startswith("2"):
            content = response.get("content", {})
            if "application/json" in content:
                schema = content["application/json"].get("schema", {})
                return f"{code}: {type_text(schema, components)}"
            if content:
                return f"{code}: {', '.join(content)}"
            return f"{code}: {response.get('description', '')}"
    return ""


def _ref_name(spec: Schema) -> str | None:
    ref = spec.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _resolve(spec: Schema, components: Schema) -> Schema:
    name = _ref_name(spec)
    resolved: Schema = components.get(name, {}) if name else spec
    return resolved


def _default(spec: Schema) -> str | None:
    return json.dumps(spec["default"]) if "default" in spec else None
