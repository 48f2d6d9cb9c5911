"""Decoding and checking Stripe's form-encoded parameters (`metadata[k]=v`, `items[0][x]=y`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.errors import (
    StripeError,
    parameter_invalid,
    parameter_missing,
    parameter_unknown,
)

Params = dict[str, Any]

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")

METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500


def decode(pairs: Iterable[tuple[str, str]]) -> Params:
    """Nest bracketed keys; a hash whose keys are all indexes becomes a list, as Stripe reads it."""
    root: Params = {}
    for raw_key, value in pairs:
        match = _KEY.match(raw_key)
        if not match:
            raise StripeError(f"Invalid parameter name: {raw_key}", param=raw_key)
        path = [match.group(1), *_PART.findall(match.group(2))]
        node = root
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise StripeError(f"Invalid parameter: {raw_key} mixes a value and a hash")
            node = child
        leaf = path[-1] or str(len(node))  # `a[]=x` appends, as curl users write it
        if isinstance(node.get(leaf), dict):
            raise StripeError(f"Invalid parameter: {raw_key} mixes a value and a hash")
        node[leaf] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def path_name(*parts: str | int) -> str:
    """`line_items`, 0, `quantity` -> `line_items[0][quantity]`, the name Stripe reports."""
    head, *rest = (str(part) for part in parts)
    return head + "".join(f"[{part}]" for part in rest)


def reject_unknown(params: Mapping[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    allowed_set = set(allowed)
    for key in params:
        if key not in allowed_set:
            raise parameter_unknown(f"{prefix}[{key}]" if prefix else key)


def get_str(
    params: Mapping[str, Any], key: str, param: str, *, required: bool = False
) -> str | None:
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise parameter_missing(param)
        return None
    if not isinstance(value, str):
        raise parameter_invalid(f"Invalid string: {param} must be a string", param)
    return value


def get_int(
    params: Mapping[str, Any],
    key: str,
    param: str,
    *,
    required: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    raw = get_str(params, key, param, required=required)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise parameter_invalid(
            f"Invalid integer: {raw}", param, code="parameter_invalid_integer"
        ) from None
    if minimum is not None and value < minimum:
        raise parameter_invalid(
            f"This value must be greater than or equal to {minimum}.",
            param,
            code="parameter_invalid_integer",
        )
    if maximum is not None and value > maximum:
        raise parameter_invalid(
            f"This value must be less than or equal to {maximum}.",
            param,
            code="parameter_invalid_integer",
        )
    return value


def get_bool(params: Mapping[str, Any], key: str, param: str) -> bool | None:
    raw = get_str(params, key, param)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise parameter_invalid(f"Invalid boolean: {raw}", param)
    return raw == "true"


def get_enum(
    params: Mapping[str, Any],
    key: str,
    param: str,
    choices: Iterable[str],
    *,
    required: bool = False,
) -> str | None:
    value = get_str(params, key, param, required=required)
    options = list(choices)
    if value is not None and value not in options:
        raise parameter_invalid(f"Invalid {param}: must be one of {', '.join(options)}", param)
    return value


def get_hash(params: Mapping[str, Any], key: str, param: str) -> dict[str, Any]:
    value = params.get(key)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise parameter_invalid(f"Invalid hash: {param} must be a hash", param)
    return value


def get_list(params: Mapping[str, Any], key: str, param: str) -> list[Any]:
    value = params.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise parameter_invalid(f"Invalid array: {param} must be an array", param)
    return value


def get_metadata(
    params: Mapping[str, Any], key: str = "metadata", prefix: str = ""
) -> dict[str, str]:
    """Stripe's metadata limits; an empty value means "unset", so it is dropped."""
    name = f"{prefix}[{key}]" if prefix else key
    raw = get_hash(params, key, name)
    if len(raw) > METADATA_MAX_KEYS:
        raise parameter_invalid(
            f"Metadata can have up to {METADATA_MAX_KEYS} keys, but you passed in {len(raw)} keys.",
            name,
        )
    metadata: dict[str, str] = {}
    for meta_key, value in raw.items():
        param = f"{name}[{meta_key}]"
        if not isinstance(value, str):
            raise parameter_invalid(f"Invalid value for {param}: must be a string", param)
        if len(meta_key) > METADATA_KEY_MAX:
            raise parameter_invalid(
                f"Metadata keys can have up to {METADATA_KEY_MAX} characters, but you passed in "
                f"a key that is {len(meta_key)} characters. Invalid key: '{meta_key}'",
                param,
            )
        if len(value) > METADATA_VALUE_MAX:
            raise parameter_invalid(
                f"Metadata values can have up to {METADATA_VALUE_MAX} characters, but you "
                f"passed in a value that is {len(value)} characters. Invalid value: '{value}'",
                param,
            )
        if value:
            metadata[meta_key] = value
    return metadata


def get_expand(params: Mapping[str, Any]) -> list[str]:
    return [str(item) for item in get_list(params, "expand", "expand") if item]
