"""Pydantic's validation errors, said the way a person fixing a YAML file needs them."""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from kling_pipeline.errors import Diagnostic
from kling_pipeline.storyboard.endpoints import type_name
from kling_pipeline.storyboard.models import FIELD_ALIASES, FRAME_TAG, PATH_TAG, Storyboard
from kling_pipeline.storyboard.templating import suggest
from kling_pipeline.storyboard.yamlsource import YamlSource, format_path
from kling_pipeline.textsafe import described, shown, yaml_spelling

# Names a person may bring from the endpoint pages, and the storyboard name to use instead.
WIRE_NAMES = {
    "negative": "negative_prompt",
    "multi_prompts": "multi_prompt",
    "seconds": "duration",
    "aspect": "aspect_ratio",
    "audio": "sound",
}

_TYPE_WORDS = {
    "string_type": "text", "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "list_type": "a list",
    "dict_type": "a mapping (key: value)", "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
}

_PATTERN_WORDS = {
    "name": "must be a simple name of letters, digits, '.', '_' and '-' (it names the output "
            "folder)",
    "base_url": "must be a URL starting with https:// (or http:// for a local server)",
}
# Said instead of any error of provider.api_key_env, and never with its value: a person who
# puts the key itself there must not find it repeated in a terminal, a log or CI output.
API_KEY_ENV_MESSAGE = (
    "must be the NAME of the environment variable that holds the API key, such as "
    "NOVITA_API_KEY (letters, digits and _, not starting with a digit), not the key itself; "
    "the value given is not such a name and is not shown here in case it is a key: put the "
    "key in that environment variable and remove it from the storyboard")
_UNION_TAGS = frozenset({PATH_TAG, FRAME_TAG})  # a union's branch, not a key of the file
_ARTICLES = {"null": "null", "boolean": "a boolean", "integer": "a number", "number": "a number"}


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated layers to the type that holds the next level."""
    while True:
        origin = get_origin(annotation)
        if origin in (Union, types.UnionType):
            non_null = [a for a in get_args(annotation) if a is not type(None)]
            models = [a for a in non_null if _is_model(_unwrap(a))]
            if len(non_null) != 1 and len(models) != 1:
                return annotation
            annotation = non_null[0] if len(non_null) == 1 else models[0]
        elif origin is not None and hasattr(annotation, "__metadata__"):
            annotation = get_args(annotation)[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def model_at(path: Iterable[str | int]) -> type[BaseModel] | None:
    """The model class found at a location of the storyboard, if one is."""
    current: Any = Storyboard
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is list:
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unknown_key(source: YamlSource, parent: tuple[str | int, ...], key: str) -> Diagnostic:
    model = model_at(parent)
    allowed = list(model.model_fields) if model else []
    if key in FIELD_ALIASES and FIELD_ALIASES[key] in allowed:  # pydantic: "extra" when both
        return source.diagnostic((*parent, key), f"{key!r} is the API's name for "
                                 f"{FIELD_ALIASES[key]!r}, which is set here too; give one of "
                                 "them", key=True)
    hint = f" (did you mean {WIRE_NAMES[key]!r}?)" if key in WIRE_NAMES else suggest(key, allowed)
    message = f"unknown key {shown(key)}{hint}"
    if allowed:
        message += "; allowed here: " + ", ".join(allowed)
    return source.diagnostic((*parent, key), message, key=True)


def _key_not_text(source: YamlSource, parent: tuple[str | int, ...], key: Any) -> Diagnostic:
    """A key YAML read as a number, a boolean or null (`1:`, `true:`, `null:`)."""
    model = model_at(parent)
    allowed = list(model.model_fields) if model else []
    spelled = yaml_spelling(key)
    kind = _ARTICLES.get(type_name(key), type_name(key))
    message = f"unknown key {spelled}: YAML reads it as {kind}, not as text, and keys here " \
              "are names"
    if allowed:
        message += "; allowed here: " + ", ".join(allowed)
    return source.diagnostic((*parent, str(key)), message, key=True,
                             location=format_path((*parent, spelled)))


def _message(error: ErrorDetails, field: str) -> str:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value = error.get("input")
    if field == "api_key_env":
        return API_KEY_ENV_MESSAGE
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {described(value)}"
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        if field == "version":
            return f"must be {expected}: the only storyboard format this version reads " \
                   f"(this file says {yaml_spelling(value)})"
        return f"must be {expected}, got {described(value)}"
    if kind == "string_pattern_mismatch":
        if field in _PATTERN_WORDS:
            return f"{_PATTERN_WORDS[field]}; got {shown(value)}"
        return f"{shown(value)} is not a valid name: use letters, digits and _, not starting " \
               "with a digit"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return f"must be {bounds[kind]} {limit}, got {yaml_spelling(value)}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    text = str(error["msg"])
    return text[:1].lower() + text[1:]


def diagnostics_from(errors: Iterable[ErrorDetails], source: YamlSource) -> list[Diagnostic]:
    """One readable, located diagnostic per pydantic error."""
    found: list[Diagnostic] = []
    for error in errors:
        loc = tuple(part for part in error["loc"] if part not in _UNION_TAGS)
        if error["type"] == "extra_forbidden":
            found.append(_unknown_key(source, loc[:-1], str(loc[-1])))
            continue
        if error["type"] == "invalid_key" and loc:
            # the key as YAML read it: 1, true, null
            found.append(_key_not_text(source, loc[:-1], error.get("input")))
            continue
        if loc and loc[-1] == "[key]":
            where = loc[:-1]
            message = _message(error, "[key]")
            if error["type"] == "string_type":
                key = error.get("input")
                message = (f"key {yaml_spelling(key)} is {type_name(key)}, not a name: names "
                           "use letters, digits and _, not starting with a digit")
            found.append(source.diagnostic(where, message, key=True,
                                           location=format_path(where[:-1])))
            continue
        field = str(loc[-1]) if loc else ""
        found.append(source.diagnostic(loc, _message(error, field),
                                       key=error["type"] == "missing"))
    return found
