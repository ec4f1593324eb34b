"""The endpoint registry: every Kling endpoint the tool knows, as data.

One `Endpoint` per slug lists its fields with their storyboard name, wire name, type, range,
choices, length limits and conditions. The same rules check a storyboard before money is spent
(`check_values` via `to_wire`) and check a request body in the simulator (`validate_body`), so
the two can never disagree. A new endpoint is one entry in `ENDPOINTS`, never a new if-branch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kling_pipeline.textsafe import cut, described, printable

FieldKind = Literal["text", "integer", "number", "boolean", "image", "multi_prompt"]
Path = tuple[str | int, ...]

_DATA_URI = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)


@dataclass(frozen=True)
class FieldSpec:
    """One request field: how a storyboard names it, how the API names it, what it allows."""

    name: str
    wire: str
    kind: FieldKind
    doc: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] = ()
    min_length: int | None = None
    max_length: int | None = None
    as_string: bool = False
    only_when: tuple[str, Any] | None = None
    api_default: Any = None
    # A floor above the API's own, to keep a storyboard from paying for nothing; the
    # simulator, being the API, does not apply it (check_values(..., for_storyboard=False)).
    tool_min_length: int | None = None

    def allowed(self) -> str:
        """Describe what the field accepts, for error messages and docs."""
        if self.choices:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{_show(self.minimum)}..{_show(self.maximum)}"
        if self.max_length is not None:
            return f"{self.min_length or 0}..{self.max_length} characters"
        return {
            "text": "text",
            "integer": "a whole number",
            "number": "a number",
            "boolean": "true or false",
            "image": "a local .png/.jpg path or an http(s) URL",
            "multi_prompt": "a list of {prompt, duration}",
        }[self.kind]


@dataclass(frozen=True)
class MultiPromptRule:
    """Multi-shot: 1..max_items parts whose durations add up to the video's duration."""

    max_items: int = 6
    item_prompt_max: int = 2500
    item_duration_min: int = 1


@dataclass(frozen=True)
class Endpoint:
    """One `/v3/async/{slug}` endpoint."""

    slug: str
    title: str
    task: Literal["t2v", "i2v"]
    price_family: str | None
    fields: tuple[FieldSpec, ...]
    exclusive: tuple[tuple[str, str], ...] = ()
    one_of: tuple[tuple[str, ...], ...] = ()
    multi_prompt: MultiPromptRule | None = None
    by_name: Mapping[str, FieldSpec] = field(init=False, repr=False, compare=False)
    by_wire: Mapping[str, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})
        object.__setattr__(self, "by_wire", {f.wire: f for f in self.fields})

    def default_duration(self) -> int:
        spec = self.by_name.get("duration")
        return int(spec.api_default) if spec is not None and spec.api_default else 5


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request, located by storyboard field names."""

    path: Path
    message: str
    reason: str = "INVALID_REQUEST_BODY"


# --- field builders: the families share most fields -------------------------------------

def _prompt(max_length: int, min_length: int = 0, required: bool = True,
            tool_min_length: int | None = None) -> FieldSpec:
    return FieldSpec("prompt", "prompt", "text", "Positive prompt: motion, camera, action, mood.",
                     required=required, min_length=min_length, max_length=max_length,
                     tool_min_length=tool_min_length)


def _negative(max_length: int) -> FieldSpec:
    return FieldSpec("negative_prompt", "negative_prompt", "text",
                     "What to avoid in picture and sound.", min_length=0, max_length=max_length)


def _cfg(wire: str) -> FieldSpec:
    return FieldSpec("cfg_scale", wire, "number",
                     "How closely to follow the prompt (higher) versus natural motion (lower).",
                     minimum=0.0, maximum=1.0, api_default=0.5)


_SOUND = FieldSpec("sound", "sound", "boolean", "Generate an audio track too.", api_default=False)
_DURATION_V3 = FieldSpec("duration", "duration", "integer", "Seconds of video.",
                         minimum=3, maximum=15, api_default=5)
_DURATION_5_10 = FieldSpec("duration", "duration", "integer", "Seconds of video.",
                           choices=(5, 10), api_default=5)
_ASPECT = FieldSpec("aspect_ratio", "aspect_ratio", "text", "Frame shape.",
                    choices=("16:9", "9:16", "1:1"), api_default="16:9")
_MULTI = FieldSpec("multi_prompt", "multi_prompt", "multi_prompt",
                   "Multi-shot: a list of {prompt, duration} parts.")
_IMAGE_V3 = FieldSpec("image", "image", "image",
                      "First frame (.png/.jpg, >= 300 px, 1:2.5..2.5:1).", required=True)
_END_IMAGE_V3 = FieldSpec("end_image", "end_image", "image", "Last frame to transition to.")


def _v3_i2v(slug: str, title: str, family: str) -> Endpoint:
    return Endpoint(
        slug, title, "i2v", family,
        (_IMAGE_V3, _SOUND, _prompt(2500, required=False), _DURATION_V3, _cfg("cfg_scale"),
         _END_IMAGE_V3, _MULTI, _negative(2500)),
        exclusive=(("prompt", "multi_prompt"), ("end_image", "multi_prompt")),
        one_of=(("prompt", "multi_prompt"),),
        multi_prompt=MultiPromptRule(),
    )


def _v3_t2v(slug: str, title: str, family: str) -> Endpoint:
    return Endpoint(
        slug, title, "t2v", family,
        # The page allows 0..2500; an empty text-to-video prompt buys a video of nothing, so
        # a storyboard may not send one (image-to-video may: the image says what to show).
        (_SOUND, _prompt(2500, required=False, tool_min_length=1), _DURATION_V3,
         _cfg("cfg_scale"),
         _ASPECT,
         _MULTI, _negative(2500)),
        exclusive=(("prompt", "multi_prompt"),),
        one_of=(("prompt", "multi_prompt"),),
        multi_prompt=MultiPromptRule(),
    )


_MODE_V16 = FieldSpec("mode", "mode", "text", "Standard (720p, cheaper) or Professional (1080p).",
                      choices=("Standard", "Professional"), api_default="Standard")

ENDPOINTS: Mapping[str, Endpoint] = {
    e.slug: e
    for e in (
        _v3_i2v("kling-v3.0-pro-i2v", "Kling v3.0 Pro image-to-video", "kling-v3.0-pro"),
        _v3_i2v("kling-v3.0-std-i2v", "Kling v3.0 Standard image-to-video", "kling-v3.0-std"),
        _v3_t2v("kling-v3.0-pro-t2v", "Kling v3.0 Pro text-to-video", "kling-v3.0-pro"),
        _v3_t2v("kling-v3.0-std-t2v", "Kling v3.0 Standard text-to-video", "kling-v3.0-std"),
        # api-notes: the 4K members take the same fields as pro.
        _v3_i2v("kling-v3.0-4k-i2v", "Kling v3.0 4K image-to-video", "kling-v3.0-4k"),
        _v3_t2v("kling-v3.0-4k-t2v", "Kling v3.0 4K text-to-video", "kling-v3.0-4k"),
        Endpoint(
            "kling-v1.6-i2v", "Kling v1.6 image-to-video", "i2v", None,
            (_MODE_V16,
             FieldSpec("image", "image_url", "image", "First frame.", required=True),
             FieldSpec("end_image", "end_image_url", "image",
                       "Last frame (Professional mode only).", only_when=("mode", "Professional")),
             _prompt(2000, min_length=1), _negative(2000), _DURATION_5_10, _cfg("guidance_scale")),
        ),
        # From api-notes: the v3.0 text-to-video fields less sound and multi-shot, Standard
        # mode only, prompt 1..2000, guidance_scale.
        Endpoint(
            "kling-v1.6-t2v", "Kling v1.6 text-to-video", "t2v", None,
            (FieldSpec("mode", "mode", "text", "Generation mode (Standard only).",
                       choices=("Standard",), api_default="Standard"),
             _prompt(2000, min_length=1), _negative(2000), _DURATION_5_10, _cfg("guidance_scale"),
             _ASPECT),
        ),
    )
}



def get_endpoint(slug: str) -> Endpoint | None:
    return ENDPOINTS.get(slug)


# --- checks -------------------------------------------------------------------------------

def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return f'"{cut(printable(value), 60)}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_scalar(spec: FieldSpec, value: Any, path: Path, slug: str,
                  for_storyboard: bool) -> list[Problem]:
    """Type, range, choices and length of one value (python types, not wire types)."""
    kind = spec.kind
    if kind == "text" or kind == "image":
        if not isinstance(value, str):
            return [Problem(path, f"must be text, got {type_name(value)}")]
        if spec.choices and value not in spec.choices:
            return [Problem(path, f"{_show(value)} is not allowed for {slug}; allowed: "
                                  + ", ".join(_show(c) for c in spec.choices))]
        length = len(value)
        if spec.max_length is not None and length > spec.max_length:
            return [Problem(path, f"is {length} characters long; {slug} allows at most "
                                  f"{spec.max_length}")]
        if spec.min_length is not None and length < spec.min_length:
            return [Problem(path, f"must not be empty for {slug} "
                                  f"({spec.min_length}..{spec.max_length} characters)")]
        if for_storyboard and spec.tool_min_length is not None \
                and length < spec.tool_min_length:
            return [Problem(path, f"must not be empty for {slug}: the API takes an empty "
                                  "prompt, but it would buy a video of nothing "
                                  f"({spec.tool_min_length}..{spec.max_length} characters)")]
        return []
    if kind == "boolean":
        if not isinstance(value, bool):
            return [Problem(path, f"must be true or false, got {type_name(value)}")]
        return []
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            return [Problem(path, f"must be a whole number, got {described(value)}")]
    elif kind == "number" and not _is_number(value):
        return [Problem(path, f"must be a number, got {described(value)}")]
    if spec.choices and value not in spec.choices:
        return [Problem(path, f"must be {spec.allowed()} for {slug}, got {_show(value)}")]
    low, high = spec.minimum, spec.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        return [Problem(path, f"must be {spec.allowed()} for {slug}, got {_show(value)}")]
    return []


def type_name(value: Any) -> str:
    """A person's word for the type of a YAML/JSON value."""
    return {bool: "boolean", int: "integer", float: "number", str: "text", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _check_multi_prompt(rule: MultiPromptRule, items: Any, duration: Any, slug: str,
                        duration_spec: FieldSpec | None) -> list[Problem]:
    path: Path = ("multi_prompt",)
    if not isinstance(items, list):
        return [Problem(path, f"must be a list of {{prompt, duration}}, got {type_name(items)}")]
    if not 1 <= len(items) <= rule.max_items:
        return [Problem(path, f"has {len(items)} parts; {slug} takes 1..{rule.max_items}")]
    problems: list[Problem] = []
    total = 0
    for i, item in enumerate(items):
        here = (*path, i)
        if not isinstance(item, dict):
            problems.append(Problem(here, f"must be a mapping {{prompt, duration}}, "
                                          f"got {type_name(item)}"))
            continue
        unknown = sorted(set(item) - {"prompt", "duration"})
        if unknown:
            problems.append(Problem(here, f"unknown field(s) {', '.join(unknown)}; "
                                          "a part has only prompt and duration"))
        prompt = item.get("prompt")
        if not isinstance(prompt, str):
            problems.append(Problem((*here, "prompt"), "is required and must be text"))
        elif not prompt.strip():
            problems.append(Problem((*here, "prompt"), "must not be empty"))
        elif len(prompt) > rule.item_prompt_max:
            problems.append(Problem((*here, "prompt"), f"is {len(prompt)} characters long; "
                                                       f"{slug} allows at most "
                                                       f"{rule.item_prompt_max}"))
        seconds = item.get("duration")
        if isinstance(seconds, float) and seconds.is_integer():
            seconds = int(seconds)  # 3.0, as Python's json writes it: as the duration field takes
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            problems.append(Problem((*here, "duration"), "is required and must be a whole "
                                                         "number of seconds"))
        elif seconds < rule.item_duration_min:
            problems.append(Problem((*here, "duration"), f"must be at least "
                                                         f"{rule.item_duration_min}"))
        else:
            total += seconds
    if problems:
        return problems
    if duration_spec is not None:
        low, high = duration_spec.minimum, duration_spec.maximum
        if (low is not None and total < low) or (high is not None and total > high):
            problems.append(Problem(path, f"parts add up to {total} s; {slug} makes "
                                          f"{duration_spec.allowed()} s"))
    if duration is not None and _is_number(duration) and duration != total:
        problems.append(Problem(("duration",), f"is {_show(duration)} but the multi_prompt parts "
                                               f"add up to {total} s; make them agree"))
    return problems


def check_values(endpoint: Endpoint, values: Mapping[str, Any], *,
                 for_storyboard: bool = True) -> list[Problem]:
    """Check a request given by storyboard field names against every rule of the endpoint,
    and, `for_storyboard`, against the tool's own floors (`FieldSpec.tool_min_length`)."""
    problems: list[Problem] = []
    slug = endpoint.slug
    for name in values:
        if name not in endpoint.by_name:
            problems.append(Problem((name,), f"{slug} takes no {name}; it takes "
                                             + ", ".join(endpoint.by_name)))
    for spec in endpoint.fields:
        if spec.name not in values:
            continue
        value = values[spec.name]
        if spec.kind == "multi_prompt":
            if endpoint.multi_prompt is not None:
                problems += _check_multi_prompt(endpoint.multi_prompt, value,
                                                values.get("duration"), slug,
                                                endpoint.by_name.get("duration"))
        else:
            problems += _check_scalar(spec, value, (spec.name,), slug, for_storyboard)
        if spec.only_when is not None:
            other, wanted = spec.only_when
            actual = values.get(other, endpoint.by_name[other].api_default)
            if actual != wanted:
                problems.append(Problem((spec.name,), f"needs {other}: {_show(wanted)} on {slug} "
                                                      f"({other} is {_show(actual)})"))
    for first, second in endpoint.exclusive:
        if first in values and second in values:
            problems.append(Problem((second,), f"cannot be used together with {first} on {slug}"))
    for group in endpoint.one_of:
        if not any(name in values for name in group):
            problems.append(Problem((group[0],), f"is required: give {' or '.join(group)}"))
    for spec in endpoint.fields:
        if spec.required and spec.name not in values:
            problems.append(Problem((spec.name,), f"is required by {slug}"))
    return problems


def wire_body(endpoint: Endpoint, values: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body for checked values: wire names, wire types, in registry order."""
    body: dict[str, Any] = {}
    for spec in endpoint.fields:
        if spec.name not in values:
            continue
        value = values[spec.name]
        if spec.kind == "integer" and isinstance(value, float):
            value = int(value)
        if spec.as_string:
            value = str(value)
        body[spec.wire] = value
    if "multi_prompt" in body and "duration" in endpoint.by_name and "duration" not in body:
        # The API's default duration need not match the parts: send their sum explicitly.
        body[endpoint.by_name["duration"].wire] = sum(p["duration"] for p in body["multi_prompt"])
    return body


def values_from_body(endpoint: Endpoint, body: Mapping[str, Any]) -> tuple[dict[str, Any],
                                                                           list[Problem]]:
    """Map a wire body back to storyboard names; unknown wire fields are problems."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for wire, value in body.items():
        spec = endpoint.by_wire.get(wire)
        if spec is None:
            problems.append(Problem((wire,), f"unknown field for {endpoint.slug}; it takes "
                                             + ", ".join(endpoint.by_wire)))
            continue
        if spec.as_string:
            if not isinstance(value, str) or not value.isdigit():
                problems.append(Problem((spec.name,), f"must be a string of digits such as "
                                                      f'"5", got {value!r}'))
                continue
            value = int(value)
        values[spec.name] = value
    return values, problems


def validate_body(endpoint: Endpoint, body: Mapping[str, Any]) -> list[Problem]:
    """Check a request body as the API receives it (wire names); used by the simulator.

    Image fields must be an http(s) URL or a data URI; decoding them is the caller's job.
    Problem paths name wire fields.
    """
    values, problems = values_from_body(endpoint, body)
    problems += check_values(endpoint, values, for_storyboard=False)
    for spec in endpoint.fields:
        value = values.get(spec.name)
        if spec.kind == "image" and isinstance(value, str) and not is_image_reference(value):
            problems.append(Problem((spec.name,), "must be an http(s) URL or a data:image/...;"
                                                  "base64, URI", reason="INVALID_IMAGE_FORMAT"))
    return [_to_wire_path(endpoint, p) for p in problems]


def _to_wire_path(endpoint: Endpoint, problem: Problem) -> Problem:
    head = problem.path[0] if problem.path else ""
    spec = endpoint.by_name.get(str(head))
    if spec is None:
        return problem
    return Problem((spec.wire, *problem.path[1:]), problem.message, problem.reason)


def is_image_reference(value: str) -> bool:
    """True for what an image field may carry on the wire: a URL or a data URI."""
    return is_url(value) or bool(_DATA_URI.match(value))


def is_url(value: str) -> bool:
    """An http(s) URL; the scheme in any case, as URLs allow (`HTTPS://...`)."""
    return value[:8].lower().startswith(("https://", "http://"))


def effective_duration(endpoint: Endpoint, body: Mapping[str, Any]) -> int:
    """Seconds of video a request makes (for estimates and the simulator)."""
    spec = endpoint.by_name.get("duration")
    if spec is not None and spec.wire in body:
        return int(body[spec.wire])
    parts = body.get("multi_prompt")
    if isinstance(parts, list) and parts:
        return sum(int(p.get("duration", 0)) for p in parts if isinstance(p, dict))
    return endpoint.default_duration()


def price_names() -> frozenset[str]:
    """What a `provider.prices` key may name: an endpoint slug, or a price family of slugs."""
    return frozenset(ENDPOINTS) | frozenset(
        e.price_family for e in ENDPOINTS.values() if e.price_family)
