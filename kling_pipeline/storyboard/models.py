"""Storyboard format v1 as pydantic models: the structure, and the source of the JSON Schema.

Structure only: which keys exist and what type each holds. What a value may be for a given
model (ranges, choices, lengths) depends on the endpoint and on rendered templates, so those
checks live in `endpoints.py` and run after rendering. Any string is a Jinja template, and a
number or boolean field may hold a template (`duration: "{{ item.seconds }}"`) too.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kling_pipeline.storyboard.endpoints import ENDPOINTS, price_names
from kling_pipeline.storyboard.fieldnames import FIELD_ALIASES, is_template
from kling_pipeline.textsafe import described, looks_like_secret

__all__ = ["FIELD_ALIASES", "PRICE_NAMES", "FrameOf", "Price", "Shot", "ShotFields", "Storyboard",
           "StoryboardHead", "extension_keys", "is_template", "storyboard_schema"]

SCHEMA_ID = "https://kling-pipeline.dev/schemas/storyboard.schema.json"
_TEMPLATE_SCHEMA = {"type": "string", "pattern": r"\{\{|\{%",
                    "description": "A Jinja template that renders to the value"}
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _also(name: str) -> AliasChoices:
    """Accept a field under its storyboard name or the API name of `FIELD_ALIASES`."""
    return AliasChoices(name, *(a for a, c in FIELD_ALIASES.items() if c == name))


def _typed_or_template(accepts: tuple[type, ...], label: str) -> Callable[[Any], Any]:
    """A validator for a value of `accepts`, or a string template rendering to one."""

    def check(value: Any) -> Any:
        if is_template(value):
            return value
        if isinstance(value, bool) and bool not in accepts:
            raise PydanticCustomError("wrong_type", "must be {label}, got a boolean",
                                      {"label": label})
        if isinstance(value, accepts):
            return value
        got = described(value)
        raise PydanticCustomError("wrong_type", "must be {label} (or a {tmpl}), got {got}",
                                  {"label": label, "got": got, "tmpl": "{{ template }}"})

    return check


def _schema(kind: str) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [{"type": kind}, _TEMPLATE_SCHEMA]})


Integer: TypeAlias = Annotated[int | str, PlainValidator(
    _typed_or_template((int,), "a whole number")), _schema("integer")]
Number: TypeAlias = Annotated[float | int | str, PlainValidator(
    _typed_or_template((int, float), "a number")), _schema("number")]
Boolean: TypeAlias = Annotated[bool | str, PlainValidator(
    _typed_or_template((bool,), "true or false")), _schema("boolean")]
ModelName: TypeAlias = Annotated[str, WithJsonSchema({
    "anyOf": [{"enum": sorted(ENDPOINTS)}, _TEMPLATE_SCHEMA],
    "description": "The endpoint slug: " + ", ".join(sorted(ENDPOINTS)),
})]


# What a `provider.prices` key may name: an endpoint slug, or a price family of slugs.
PRICE_NAMES: frozenset[str] = price_names()


def _refused(kind: str, message: str) -> PydanticCustomError:
    """An error whose message is said as is (braces in it are not a template)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def _priced(name: str) -> str:
    """A price under a name no endpoint has would silently never be used: a typo."""
    if name in PRICE_NAMES:
        return name
    close = difflib.get_close_matches(name, sorted(PRICE_NAMES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise _refused("price_name", f"{name!r} names no endpoint or price family, so its price "
                                 f"would never be used{hint}; known: "
                                 + ", ".join(sorted(PRICE_NAMES)))


def _an_integer(value: Any) -> Any:
    """`version: true` and `version: 1.0` are not 1 (Python's True == 1.0 == 1 let them
    through as the number)."""
    if type(value) is not int:
        raise PydanticCustomError("literal_error", "Input should be {expected}",
                                  {"expected": "1"})
    return value


_SEPARATORS = re.compile(r"[\\/]")
_ABSOLUTE = re.compile(r"^(?:[\\/]|[A-Za-z]:[\\/])")


def _own_folder(value: str) -> str:
    """The output folder must be a folder of its own: apply writes index.html, final.mp4 and
    manifest.json there and deletes the files it made before. A relative path is read from
    the storyboard's folder on every machine that checks it out, so it must stay below it.

    Lexical only (no file system here): an absolute path that holds the storyboard is refused
    by `apply`, which knows where the storyboard is. Both separators count, for Windows.
    """
    absolute = _ABSOLUTE.match(value)
    below = value[absolute.end():] if absolute else value
    parts = [part for part in _SEPARATORS.split(below) if part not in ("", ".")]
    if "\0" in value:
        raise _refused("output_folder", f"{value!r}: a folder name cannot hold a NUL character")
    if value.startswith("~"):
        raise _refused("output_folder", f"{value!r}: '~' is not your home folder here, the "
                                        "path is read from the storyboard's folder; give a "
                                        "folder inside it (renders/<name>) or an absolute path")
    if ".." in parts:
        raise _refused("output_folder", f"{value!r} goes up out of the storyboard's folder "
                                        "('..'): the output folder must be a folder of its "
                                        "own inside it (renders/<name>), or an absolute path")
    if not parts:
        where = "the root folder" if absolute else "the storyboard's folder"
        raise _refused("output_folder", f"{value!r} is {where}, which holds the storyboard "
                                        "itself: apply writes index.html, final.mp4 and "
                                        "manifest.json in the output folder and deletes its "
                                        "old videos there; give a folder of its own (the "
                                        "default is renders/<name>)")
    return value


_PRICE_KEYS: dict[str, Any] = {"propertyNames": {"enum": sorted(PRICE_NAMES)}}


class _Strict(BaseModel):
    """Strict, frozen, no unknown keys; built on first use, not at import.

    `defer_build`: a class's validator is made the first time it validates, so a valid
    storyboard builds one (Storyboard's, which holds the others inline) instead of one per class
    at import; StoryboardHead's and Shot's own are built only for a storyboard with errors.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class Price(_Strict):
    """US dollars per second of video (an estimate you may correct)."""

    per_second: float = Field(ge=0)
    per_second_sound: float | None = Field(default=None, ge=0,
                                           description="With sound on; per_second when absent")


def _a_name_not_a_key(value: str) -> str:
    """`sk_live_...` fits the name pattern, and apply would then print it in "set the
    environment variable ...": a value that looks like a key is refused (never echoed)."""
    if looks_like_secret(value):
        raise PydanticCustomError("looks_like_a_key", "looks like a key, not a name")
    return value


class Provider(_Strict):
    """Where requests go and how hard the tool may push."""

    base_url: str = Field(default="https://api.novita.ai", pattern=r"^https?://",
                          description="The router serving /v3/async/*; not part of any key")
    api_key_env: Annotated[str, AfterValidator(_a_name_not_a_key)] = Field(
        default="NOVITA_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the key")
    requests_per_minute: int = Field(default=20, ge=1, le=6000,
                                     description="Submissions per minute per endpoint")
    concurrency: int = Field(default=4, ge=1, le=256, description="Shots worked on at once")
    prices: dict[Annotated[str, AfterValidator(_priced)], Price] = Field(
        default_factory=dict,
        description="Price table override, by endpoint slug or family (kling-v3.0-pro)",
        json_schema_extra=_PRICE_KEYS)


def _no_credentials(value: str) -> str:
    """A remote URL names a place; its credentials come from the backend's usual places
    (environment, profile), never from the storyboard, which is committed (never echoed)."""
    head = value.split("://", 1)
    if len(head) == 2 and "@" in head[1].split("/", 1)[0]:
        raise PydanticCustomError(
            "credentials_in_url", "holds credentials (user@ or user:secret@): give them "
            "through the backend's environment or profile, never in the storyboard")
    return value


RemoteUrl: TypeAlias = Annotated[str, Field(min_length=1, json_schema_extra={
    "pattern": r"^[^\x00]+$"}), AfterValidator(_no_credentials)]


class Remote(_Strict):
    """Where a team shares the videos (docs/remote.md)."""

    url: RemoteUrl = Field(description="s3://bucket/prefix, a folder (/mnt/nas/kling, "
                                       "file:///...), or any fsspec URL")
    endpoint_url: str | None = Field(
        default=None, pattern=r"^https?://",
        description="An S3-compatible server (MinIO, R2, ...) for an s3:// URL")


def _remote_from_text(value: Any) -> Any:
    """`remote: URL` is `remote: {url: URL}` (so an error never echoes the URL)."""
    return {"url": value} if isinstance(value, str) else value


def _remote_schema(schema: dict[str, Any]) -> None:
    schema["anyOf"] = [{"type": "string", "minLength": 1, "pattern": r"^[^\x00]+$"},
                       *schema.get("anyOf", [])]


class MultiPromptPart(_Strict):
    """One part of a multi-shot video."""

    prompt: str = Field(description="Template")
    duration: Integer = Field(description="Seconds of this part")


FRAME_CHOICES = ("first", "last")


class FrameOf(_Strict):
    """A frame of another shot's video as this shot's image: `{shot: opening, frame: last}`
    or `{shot: wave-2, at: 2.5}`. The other shot is rendered first; the frame's bytes stand
    for the image in the key, as a local file's do."""

    model_config = ConfigDict(json_schema_extra={
        "oneOf": [{"required": ["frame"]}, {"required": ["at"]}]})

    shot: str = Field(min_length=1, description="Id of the shot whose video gives the frame "
                                                "(a template: a foreach item may name the "
                                                "shot before it)")
    frame: Literal["first", "last"] | None = Field(
        default=None, description="The first or the last frame of that video")
    at: Number | None = Field(default=None, description="Seconds into that video: the frame "
                                                        "on screen at that time")

    @model_validator(mode="after")
    def _one_frame(self) -> FrameOf:
        if (self.frame is None) == (self.at is None):
            raise _refused("frame_choice", "give one of frame: first|last or at: <seconds>"
                           if self.frame is None else
                           "give frame or at, not both")
        return self


def _image_kind(value: Any) -> str:
    """A mapping is a frame of another shot; anything else must be a path or URL (text)."""
    return FRAME_TAG if isinstance(value, dict | FrameOf) else PATH_TAG


# The tags appear in pydantic's error locations; validation.py drops them from the path.
PATH_TAG, FRAME_TAG = "<path>", "<frame>"
Image: TypeAlias = Annotated[Annotated[str, Tag(PATH_TAG)] | Annotated[FrameOf, Tag(FRAME_TAG)],
                             Discriminator(_image_kind)]


class ShotFields(_Strict):
    """Request fields a shot or the defaults may set (storyboard names)."""

    model: ModelName | None = None
    prompt: str | None = Field(default=None, description="Template; limits depend on the model")
    negative_prompt: str | None = Field(default=None, description="Template")
    multi_prompt: list[MultiPromptPart] | None = Field(
        default=None, description="Multi-shot parts; excludes prompt and end_image")
    image: Image | None = Field(default=None, validation_alias=_also("image"),
                                description="First frame: a path relative to the storyboard, "
                                            "an http(s) URL, or a frame of another shot "
                                            "({shot: id, frame: first|last} or {shot: id, at: "
                                            "seconds}); also spelled image_url")
    end_image: Image | None = Field(default=None, validation_alias=_also("end_image"),
                                    description="End frame: path, URL or a frame of another "
                                                "shot (also spelled end_image_url)")
    duration: Integer | None = None
    aspect_ratio: str | None = Field(default=None, description="16:9, 9:16 or 1:1 (t2v models)")
    sound: Boolean | None = None
    cfg_scale: Number | None = Field(default=None, validation_alias=_also("cfg_scale"),
                                     description="0..1 (also spelled guidance_scale)")
    mode: str | None = Field(default=None, description="v1.6: Standard or Professional")


class Defaults(ShotFields):
    """Fields every shot gets unless it sets them; ignored where a model does not take them."""


class Shot(ShotFields):
    """One entry of `shots`: one request, or many with foreach/matrix."""

    id: str = Field(min_length=1, description="Template; a safe file name once rendered")
    take: int = Field(default=1, ge=1, description="Re-roll counter: changing it re-renders")
    vars: dict[Annotated[str, Field(pattern=IDENTIFIER)], Any] = Field(default_factory=dict)
    foreach: list[Any] | None = Field(default=None, min_length=1,
                                      description="One shot per item, as `item`")
    matrix: dict[Annotated[str, Field(pattern=IDENTIFIER)],
                 Annotated[list[Any], Field(min_length=1)]] | None = Field(
        default=None, min_length=1,
        description="One shot per combination, as `item.<name>`")


class StoryboardHead(_Strict):
    """Everything of a storyboard but its shots (validated alone when a shot is broken)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, defer_build=True,
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema",
                           "$id": SCHEMA_ID,
                           "patternProperties": {"^x-": {}}},
    )

    version: Annotated[Literal[1], BeforeValidator(_an_integer)] = Field(
        description="Storyboard format version")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100,
                      description="Project name: names the output folder")
    description: str | None = None
    output: Annotated[str, Field(min_length=1, json_schema_extra={"pattern": r"^[^\x00]+$"}),
                      AfterValidator(_own_folder)] | None = Field(
        default=None,
        description="Output folder: a folder of its own below the storyboard's folder, "
                    "relative to it (no '..', no '~'), or an absolute path (default: "
                    "renders/<name>); `apply --simulate` adds `.simulated` to its name")
    provider: Provider = Field(default_factory=Provider)
    remote: Annotated[Remote, BeforeValidator(_remote_from_text)] | None = Field(
        default=None, json_schema_extra=_remote_schema,
        description="Shared store of the videos for push and pull: a URL, or {url, "
                    "endpoint_url}; --remote and KLING_PIPELINE_REMOTE override it")
    defaults: Defaults = Field(default_factory=Defaults)
    vars: dict[Annotated[str, Field(pattern=IDENTIFIER)], Any] = Field(default_factory=dict)
    snippets: dict[Annotated[str, Field(pattern=IDENTIFIER)], str] = Field(
        default_factory=dict, description="Reusable templates: {{ snippets.name }}")


class Storyboard(StoryboardHead):
    """A storyboard file, format version 1."""

    shots: list[Shot] = Field(min_length=1)


def extension_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Top-level `x-...` keys hold YAML anchors and notes; they are not part of the model."""
    return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}


def storyboard_schema() -> dict[str, Any]:
    """The JSON Schema of storyboard format v1 (written to schemas/ by `kling-pipeline schema`)."""
    schema: dict[str, Any] = _without_nulls(Storyboard.model_json_schema())
    schema["title"] = "kling-pipeline storyboard"
    for model in ("Shot", "Defaults"):
        _add_aliases(schema["$defs"][model])
    return schema


def _add_aliases(definition: dict[str, Any]) -> None:
    """pydantic's schema names a field by its first alias only: add the API spellings."""
    properties = definition["properties"]
    for alias, name in FIELD_ALIASES.items():
        properties[alias] = {**properties[name],
                             "description": f"The endpoint pages' name for {name}: give one "
                                            "of the two"}
    definition["not"] = {"anyOf": [{"required": [name, alias]}
                                   for alias, name in FIELD_ALIASES.items()]}


def _without_nulls(node: Any) -> Any:
    """Drop the `null` alternative of optional fields: an empty value is an error, not unset."""
    if isinstance(node, list):
        return [_without_nulls(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _without_nulls(v) for k, v in node.items()}
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del out["anyOf"]
        if out.get("default", 0) is None:
            del out["default"]
        if len(rest) == 1:
            out = {**rest[0], **out}
        else:
            out["anyOf"] = rest
    return out


