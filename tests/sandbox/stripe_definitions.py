"""Checks values against the types stripe-python generates from Stripe's OpenAPI spec.

`param_errors(params, SessionCreateParams)` checks request parameters against a
`stripe.params` TypedDict; `object_errors(obj, stripe.checkout.Session)` checks a JSON object
against a resource class's annotations. Both return every disagreement as
`"<path>: <problem>"`, and an empty list when the value fits.

Strict on purpose: no unknown key, no missing required key (a TypedDict's required keys; a
resource's fields not annotated `Optional`), and an enum that the SDK widens with `str`
(`Union[Literal["paid", ...], str]`, so that values Stripe adds later do not break old
clients) must still be one of the listed values: a stand-in has no business inventing new ones.
"""

from __future__ import annotations

import ast
import decimal
import functools
import inspect
import re
import sys
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import typing_extensions
from stripe._list_object import ListObject
from stripe._request_options import RequestOptions
from stripe._stripe_object import StripeObject, UntypedStripeObject

_NOT_REQUIRED = (typing.NotRequired, typing_extensions.NotRequired)
_REQUIRED = (typing.Required, typing_extensions.Required)
_LITERAL = (typing.Literal, typing_extensions.Literal)
_UNION = (typing.Union, types.UnionType)
_LIST_FIELDS = {"object": typing.Literal["list"], "has_more": bool, "url": str}

# Every top-level params TypedDict inherits RequestOptions; the SDK sends those as headers
# (Idempotency-Key, Stripe-Account, ...), so as form parameters they would be unknown.
REQUEST_OPTION_KEYS = frozenset(RequestOptions.__annotations__)


def param_errors(params: Any, params_type: Any) -> list[str]:
    """What in `params` (as passed to the SDK) a request typed `params_type` may not carry."""
    errors: list[str] = []
    _check(params, params_type, "", errors, params=True)
    return errors


def object_errors(obj: Any, resource: Any) -> list[str]:
    """What in `obj` (decoded JSON) disagrees with `resource`, e.g. `ListObject[LineItem]`."""
    errors: list[str] = []
    _check(obj, resource, "", errors, params=False)
    return errors


@dataclass(frozen=True)
class Endpoint:
    """One API method of the SDK: what it sends where, with which params type, for what."""

    method: str
    path: str  # Stripe's template, e.g. /v1/checkout/sessions/{session}
    params_type: Any
    returns: Any
    sdk_method: str

    def matches(self, method: str, path: str) -> bool:
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^/}]+\}", self.path))
        return method == self.method and re.fullmatch(pattern, path) is not None


def endpoints(*services: type) -> list[Endpoint]:
    """The endpoints of these StripeClient services (`client.v1.refunds` is a RefundService),
    read from the generated code: each method's `self._request("get", "/v1/...")` call and its
    `params` and return annotations."""
    found: list[Endpoint] = []
    for service in services:
        namespace = _module_namespace(service.__module__)
        for name, function in vars(service).items():
            if name.startswith("_") or name.endswith("_async") or not inspect.isfunction(function):
                continue
            method, path = _request_target(function)
            hints = typing.get_type_hints(function, globalns=namespace)
            params_type = hints["params"]  # Optional[...] unless some parameter is required
            if typing.get_origin(params_type) in _UNION:
                (params_type,) = (a for a in typing.get_args(params_type) if a is not type(None))
            found.append(
                Endpoint(method, path, params_type, hints["return"], f"{service.__name__}.{name}")
            )
    return found


def _request_target(function: Any) -> tuple[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_request"
        ):
            method, path = node.args[0], node.args[1]
            if isinstance(path, ast.Call) and isinstance(path.func, ast.Attribute):
                path = path.func.value  # "/v1/refunds/{refund}".format(...)
            if isinstance(method, ast.Constant) and isinstance(path, ast.Constant):
                return str(method.value), str(path.value)
    raise LookupError(f"no self._request(...) call in {function.__qualname__}")


# -- resolving the generated annotations -----------------------------------------------------


@functools.cache
def _module_namespace(module_name: str) -> dict[str, Any]:
    """A module's globals plus the names it imports only under TYPE_CHECKING, which its
    string annotations (`ExpandableField["Customer"]`) refer to."""
    module = sys.modules[module_name]
    namespace = dict(vars(module))
    for node in ast.parse(inspect.getsource(module)).body:
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            assert isinstance(node, ast.If)
            code = compile(ast.Module(body=node.body, type_ignores=[]), module_name, "exec")
            exec(code, namespace)  # the SDK's own import statements, nothing else
    return namespace


def _class_namespace(cls: type) -> dict[str, Any]:
    """The module's namespace and the classes enclosing `cls` (Session.CustomerDetails.Address
    may name its siblings)."""
    namespace = dict(_module_namespace(cls.__module__))
    owner: Any = sys.modules[cls.__module__]
    for part in cls.__qualname__.split(".")[:-1]:
        owner = getattr(owner, part)
        namespace.update(vars(owner))
    return namespace


@functools.cache
def resource_fields(cls: type) -> dict[str, Any]:
    """JSON field name -> annotation of a StripeObject class (ClassVars and privates left out)."""
    hints = typing.get_type_hints(cls, globalns=_class_namespace(cls), include_extras=True)
    remappings: Mapping[str, str] = getattr(cls, "_field_remappings", {})
    return {
        remappings.get(name, name): hint
        for name, hint in hints.items()
        if not name.startswith("_") and hint is not typing.ClassVar
        if typing.get_origin(hint) is not typing.ClassVar
    }


def _typed_dict_bases(td: type) -> list[type]:
    bases = [td]
    for base in getattr(td, "__orig_bases__", ()):
        if typing_extensions.is_typeddict(base):
            bases.extend(_typed_dict_bases(base))
    return bases


@functools.cache
def typed_dict_fields(td: type) -> tuple[dict[str, Any], frozenset[str]]:
    """(parameter name -> annotation without NotRequired, required names) of a TypedDict."""
    bases = _typed_dict_bases(td)
    namespace: dict[str, Any] = {}
    for base in reversed(bases):
        namespace.update(_module_namespace(base.__module__))
    hints = typing.get_type_hints(td, globalns=namespace, include_extras=True)
    if RequestOptions in bases:
        hints = {k: v for k, v in hints.items() if k not in REQUEST_OPTION_KEYS}
    fields = {name: _strip_required(hint) for name, hint in hints.items()}
    required = frozenset(td.__required_keys__) & fields.keys()  # type: ignore[attr-defined]
    return fields, required


def _strip_required(hint: Any) -> Any:
    while typing.get_origin(hint) in (*_NOT_REQUIRED, *_REQUIRED, typing.Annotated):
        hint = typing.get_args(hint)[0]
    return hint


# -- checking --------------------------------------------------------------------------------


def _join(path: str, key: str | int, *, params: bool) -> str:
    """`line_items[0][quantity]` for parameters (Stripe's names), `data[0].price.id` for objects."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if params:
        return f"{path}[{key}]" if path else key
    return f"{path}.{key}" if path else key


def _name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    return hint.__qualname__ if isinstance(hint, type) else repr(hint).replace("typing.", "")


def _got(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_optional(hint: Any) -> bool:
    return hint is Any or (
        typing.get_origin(hint) in _UNION and type(None) in typing.get_args(hint)
    )


def _shape(hint: Any) -> str:
    """The JSON kind a member of a Union wants, to report the relevant branch's errors."""
    origin = typing.get_origin(hint) or hint
    if typing_extensions.is_typeddict(hint) or origin in (dict, Mapping):
        return "dict"
    if isinstance(origin, type) and issubclass(origin, StripeObject):
        return "dict"
    if origin is list:
        return "list"
    return "scalar"


def _shape_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return "dict"
    return "list" if isinstance(value, list) else "scalar"


def _check(value: Any, hint: Any, path: str, errors: list[str], *, params: bool) -> None:
    where = path or "(top level)"
    hint = _strip_required(hint)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    if hint is Any:
        return
    if hint is None or hint is type(None):
        if value is not None:
            errors.append(f"{where}: expected null, got {_got(value)}")
        return
    if origin in _UNION:
        _check_union(value, args, path, errors, params=params)
        return
    if origin in _LITERAL:
        if not any(value == arg and type(value) is type(arg) for arg in args):
            allowed = ", ".join(repr(arg) for arg in args)
            errors.append(f"{where}: {value!r} is not one of {allowed}")
        return
    if typing_extensions.is_typeddict(hint):
        _check_typed_dict(value, hint, path, errors)
        return
    if hint is ListObject or origin is ListObject:
        _check_list_object(value, args[0] if args else Any, path, errors, params=params)
        return
    if origin is UntypedStripeObject or hint is UntypedStripeObject:
        _check_mapping(value, args[0] if args else Any, path, errors, params=params)
        return
    if isinstance(hint, type) and issubclass(hint, StripeObject):
        _check_resource(value, hint, path, errors)
        return
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {_got(value)}")
            return
        item_hint = args[0] if args else Any
        for index, item in enumerate(value):
            _check(item, item_hint, _join(path, index, params=params), errors, params=params)
        return
    if origin in (dict, Mapping):
        _check_mapping(value, args[1] if args else Any, path, errors, params=params)
        return
    _check_scalar(value, hint, where, errors, params=params)


def _check_union(
    value: Any, members: tuple[Any, ...], path: str, errors: list[str], *, params: bool
) -> None:
    where = path or "(top level)"
    if value is None and type(None) in members:
        return
    candidates = [m for m in members if m is not type(None)]
    literals = [m for m in candidates if typing.get_origin(m) in _LITERAL]
    if str in candidates and any(
        all(isinstance(a, str) for a in typing.get_args(m)) for m in literals
    ):
        candidates.remove(str)  # the SDK's forward-compatible widening of an enum; see above
    attempts: list[tuple[Any, list[str]]] = []
    for member in candidates:
        found: list[str] = []
        _check(value, member, path, found, params=params)
        if not found:
            return
        attempts.append((member, found))
    same_shape = [found for member, found in attempts if _shape(member) == _shape_of(value)]
    if same_shape and all(found == same_shape[0] for found in same_shape):
        # The branches that could fit (one, or several alike such as Dict[str, str] and
        # UntypedStripeObject[str]) say what is wrong.
        errors.extend(same_shape[0])
        return
    shown = candidates + [type(None)] * (type(None) in members)
    wanted = " | ".join(_name(member) for member in shown)
    errors.append(f"{where}: expected {wanted}, got {_got(value)}")


def _check_scalar(value: Any, hint: Any, where: str, errors: list[str], *, params: bool) -> None:
    if hint is str:
        ok = isinstance(value, str)
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is decimal.Decimal:
        # Stripe's decimal_string: a JSON string; the SDK also encodes Decimal and int params.
        ok = isinstance(value, str) and _is_decimal(value)
        if params:
            ok = ok or isinstance(value, decimal.Decimal | int) and not isinstance(value, bool)
    else:
        errors.append(f"{where}: no check for the annotation {hint!r} (extend the validator)")
        return
    if not ok:
        errors.append(f"{where}: expected {_name(hint)}, got {_got(value)}")


def _is_decimal(text: str) -> bool:
    try:
        decimal.Decimal(text)
    except decimal.InvalidOperation:
        return False
    return True


def _check_mapping(
    value: Any, value_hint: Any, path: str, errors: list[str], *, params: bool
) -> None:
    if not isinstance(value, Mapping):
        errors.append(f"{path or '(top level)'}: expected a hash, got {_got(value)}")
        return
    for key, item in value.items():
        if not isinstance(key, str):
            errors.append(f"{path}: key {key!r} is not a string")
            continue
        _check(item, value_hint, _join(path, key, params=params), errors, params=params)


def _check_typed_dict(value: Any, td: type, path: str, errors: list[str]) -> None:
    where = path or "(top level)"
    if not isinstance(value, Mapping):
        errors.append(f"{where}: expected a hash ({td.__name__}), got {_got(value)}")
        return
    fields, required = typed_dict_fields(td)
    for key in value:
        if key not in fields:
            errors.append(f"{_join(path, key, params=True)}: unknown parameter ({td.__name__})")
    for key in sorted(required - value.keys()):
        errors.append(f"{_join(path, key, params=True)}: missing required parameter")
    for key, item in value.items():
        if key in fields:
            _check(item, fields[key], _join(path, key, params=True), errors, params=True)


def _check_resource(value: Any, cls: type, path: str, errors: list[str]) -> None:
    where = path or "(top level)"
    if not isinstance(value, Mapping):
        errors.append(f"{where}: expected an object ({cls.__qualname__}), got {_got(value)}")
        return
    fields = resource_fields(cls)
    for key in value:
        if key not in fields:
            errors.append(f"{_join(path, key, params=False)}: not a field of {cls.__qualname__}")
    for key, hint in fields.items():
        if key not in value:
            if not _is_optional(hint):
                errors.append(
                    f"{_join(path, key, params=False)}: missing ({cls.__qualname__} requires it)"
                )
            continue
        _check(value[key], hint, _join(path, key, params=False), errors, params=False)


def _check_list_object(
    value: Any, item_hint: Any, path: str, errors: list[str], *, params: bool
) -> None:
    where = path or "(top level)"
    if not isinstance(value, Mapping):
        errors.append(f"{where}: expected a list object, got {_got(value)}")
        return
    fields = {**_LIST_FIELDS, "data": list[item_hint]}  # type: ignore[valid-type]
    for key in value:
        if key not in fields:
            errors.append(f"{_join(path, key, params=False)}: not a field of a list object")
    for key, hint in fields.items():
        if key not in value:
            errors.append(f"{_join(path, key, params=False)}: missing (list objects require it)")
            continue
        _check(value[key], hint, _join(path, key, params=False), errors, params=params)
