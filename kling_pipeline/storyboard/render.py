"""Expand a storyboard into shots and render each into the exact request it will send.

defaults + shot fields -> foreach/matrix fan-out -> templates rendered -> values typed and
checked against the endpoint registry -> wire body with local images as digests -> key.
Every problem is collected with its place in the YAML file; nothing stops at the first one.
"""

from __future__ import annotations

import collections
import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from kling_pipeline.errors import Diagnostic
from kling_pipeline.key import IMAGE_DIGEST_PREFIX, request_key
from kling_pipeline.storyboard.endpoints import (
    ENDPOINTS,
    Endpoint,
    FieldSpec,
    check_values,
    effective_duration,
    get_endpoint,
    is_url,
    wire_body,
)
from kling_pipeline.storyboard.fieldnames import FIELD_ALIASES, REQUEST_FIELDS, is_template
from kling_pipeline.storyboard.frameinput import PENDING, FrameInput
from kling_pipeline.storyboard.graph import graph_problems
from kling_pipeline.storyboard.images import ImageProblem
from kling_pipeline.storyboard.localimages import ImageInspector, LocalImage
from kling_pipeline.storyboard.templating import (
    Snippets,
    TemplateProblem,
    TemplateRenderer,
    fingerprint,
    suggest,
)
from kling_pipeline.storyboard.yamlsource import YamlSource, format_path
from kling_pipeline.textsafe import shown

if TYPE_CHECKING:
    from kling_pipeline.storyboard.models import Shot, StoryboardHead

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
             *(f"lpt{i}" for i in range(10))}
_REQUEST_FIELDS = REQUEST_FIELDS
_INT = re.compile(r"^[+-]?\d+$")
_RESERVED_VARS = frozenset({"item", "index", "snippets"})
# Shots a storyboard may make after foreach/matrix: far above real use (the plan benchmark has
# 10,000), far below what a 100 x 100 x 100 matrix makes in one line (1,000,000 shots, each
# rendered, checked and perhaps reported, took more than 4 GB).
MAX_SHOTS = 20_000


@dataclass(frozen=True)
class ShotRequest:
    """One shot, rendered: the request it sends and the key it is known by."""

    id: str
    entry: int
    endpoint: str
    body: dict[str, Any]
    local_images: dict[str, LocalImage]
    take: int
    key: str
    duration: int
    sound: bool
    frames: tuple[FrameInput, ...] = ()  # images that are frames of other shots' videos

    @property
    def upstream(self) -> tuple[str, ...]:
        """The shots whose frames this one takes, each once."""
        return tuple(dict.fromkeys(frame.shot for frame in self.frames))


@dataclass(frozen=True)
class _FrameValue:
    """A rendered `{shot: ..., frame|at: ...}` before it is tied to its field."""

    shot: str
    frame: str | None
    at: float | None


@dataclass
class _Problems:
    """Located problems; one broken default is reported once, naming the shots it breaks."""

    source: YamlSource
    items: list[Diagnostic] = field(default_factory=list)
    from_defaults: dict[tuple[tuple[str | int, ...], str], list[str]] = field(
        default_factory=dict)
    added: int = 0

    def add(self, path: tuple[str | int, ...], message: str, label: str | None = None,
            key: bool = False) -> None:
        self.added += 1
        if path[:1] == ("defaults",):
            self.from_defaults.setdefault((path, message), []).append(label or "?")
            return
        location = format_path(path)
        if label is not None and path[:1] == ("shots",) and len(path) >= 2:
            rest = format_path(path[2:])
            location = f"{format_path(path[:2])} ({label})" + (
                "" if not rest else rest if rest.startswith("[") else "." + rest)
        self.items.append(self.source.diagnostic(path, message, key=key, location=location))

    def count(self) -> int:
        """Problems added so far; a broken default counts once for every shot it breaks."""
        return self.added

    def finish(self) -> list[Diagnostic]:
        for (path, message), labels in self.from_defaults.items():
            shown = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more"
                                             if len(labels) > 3 else "")
            self.items.append(self.source.diagnostic(path, f"{message} (in shot {shown})"))
        self.from_defaults.clear()
        return self.items


def shot_is_safe_id(shot_id: str) -> str | None:
    """Why `shot_id` cannot be a file name, or None when it can."""
    if not SAFE_ID.fullmatch(shot_id):  # fullmatch: `$` would let a final newline through
        return ("must be a safe file name: 1..100 of letters, digits, '.', '_' and '-', "
                "starting with a letter or digit")
    if shot_id.endswith("."):
        return "must not end with '.'"
    if shot_id.split(".")[0].lower() in _RESERVED:
        return f"{shot_id!r} is a reserved device name on Windows"
    return None


class FanOut(Protocol):
    """What the shot limit and the memo's checks read of an entry: a Shot, or an Entry."""

    @property
    def foreach(self) -> list[Any] | None: ...

    @property
    def matrix(self) -> dict[str, list[Any]] | None: ...

    @property
    def vars(self) -> dict[str, Any]: ...


class Entry:
    """One valid entry of `shots`: its fan-out and vars, and its Shot model made on demand.

    A run whose structure is known valid (storyboard.py's structure memo) has no models; the
    entries a memo hands back never need one, so pydantic is imported only for an entry that
    must really be built. Its raw data validated as a Shot before, so reading `foreach`,
    `matrix` and `vars` from it gives what the model holds.
    """

    def __init__(self, index: int, raw: Any, shot: Shot | None = None) -> None:
        self.index = index
        self.raw: dict[str, Any] = raw if isinstance(raw, dict) else {}
        self._shot = shot

    @property
    def foreach(self) -> list[Any] | None:
        return self._shot.foreach if self._shot is not None else self.raw.get("foreach")

    @property
    def matrix(self) -> dict[str, list[Any]] | None:
        return self._shot.matrix if self._shot is not None else self.raw.get("matrix")

    @property
    def vars(self) -> dict[str, Any]:
        return self._shot.vars if self._shot is not None else self.raw.get("vars") or {}

    def shot(self) -> Shot:
        if self._shot is None:
            from kling_pipeline.storyboard.models import Shot

            self._shot = Shot.model_validate(self.raw)
        return self._shot


def _fan_out_size(shot: FanOut) -> int:
    """How many shots an entry makes, counted without making them."""
    if shot.foreach is not None:
        return len(shot.foreach)
    if shot.matrix is not None:
        return math.prod(len(values) for values in shot.matrix.values())
    return 1


def _fan_out(shot: FanOut) -> Iterator[Any]:
    if shot.foreach is not None:
        yield from shot.foreach
    elif shot.matrix is not None:
        names = list(shot.matrix)
        for combo in itertools.product(*(shot.matrix[n] for n in names)):
            yield dict(zip(names, combo, strict=True))
    else:
        yield None


class ShotMemoLike(Protocol):
    """What the renderer needs of a shot memo (see shotmemo.py)."""

    def key_for(self, raw_entry: Any) -> str: ...

    def get(self, memo_key: str, entry: int) -> list[ShotRequest] | None: ...

    def put(self, memo_key: str, shots: list[ShotRequest]) -> None: ...


class StoryboardRenderer:
    """Turns a validated storyboard into ShotRequests, collecting located problems."""

    def __init__(self, source: YamlSource, board: Callable[[], StoryboardHead],
                 variables: Mapping[str, Any], snippets: Mapping[str, str],
                 entries: list[Entry], cli_vars: Mapping[str, Any],
                 renderer: TemplateRenderer, inspector: ImageInspector) -> None:
        """`board` gives the validated head, asked only when a shot must be built;
        `variables` and `snippets` are its vars and snippets."""
        self.source = source
        self.board = board
        self.variables = dict(variables)
        self.entries = [(entry.index, entry) for entry in entries]
        self.cli_vars = dict(cli_vars)
        self.renderer = renderer
        self.inspector = inspector
        self.base_dir = source.path.parent
        self.problems = _Problems(source)
        self.snippets = Snippets(snippets, renderer)
        self._vars_fingerprints: dict[int, str] = {}  # id(shot) -> digest of its vars
        self._named: set[str] = set()  # ids of shots that did not build (for the graph check)

    @cached_property
    def defaults(self) -> dict[str, Any]:
        """The fields the defaults set (the head is validated here on a warm run's miss)."""
        defaults = self.board().defaults
        return {k: getattr(defaults, k) for k in defaults.model_fields_set}

    def run(self, memo: ShotMemoLike | None = None) -> tuple[list[ShotRequest], list[Diagnostic]]:
        """Build every shot; with a memo, entries that did not change are not built again."""
        shots: list[ShotRequest] = []
        reserved = sorted(_RESERVED_VARS & set(self.variables))
        if reserved:
            self.problems.add(("vars", reserved[0]), "is a name the tool sets itself (item, "
                              "index, snippets); choose another", key=True)
            return shots, self.problems.finish()
        raw_entries = self.source.data.get("shots") if isinstance(self.source.data, dict) \
            else None
        too_many = self._over_the_shot_limit()
        for entry, shot in self.entries:
            if entry in too_many:
                continue
            if shot.foreach is not None and shot.matrix is not None:
                self.problems.add(("shots", entry, "matrix"), "cannot be used together with "
                                  "foreach on one shot: use one of them")
                continue
            reserved = sorted(_RESERVED_VARS & set(shot.vars))
            if reserved:
                self.problems.add(("shots", entry, "vars", reserved[0]), "is a name the tool "
                                  "sets itself (item, index, snippets); choose another", key=True)
                continue
            memo_key = memo.key_for(raw_entries[entry]) if memo and raw_entries else None
            if memo is not None and memo_key is not None:
                known = memo.get(memo_key, entry)
                if known is not None:
                    shots += known
                    continue
            model = shot.shot()
            built = [self._build(entry, model, item, index)
                     for index, item in enumerate(_fan_out(model), start=1)]
            good = [b for b in built if b is not None]
            if memo is not None and memo_key is not None and len(good) == len(built):
                memo.put(memo_key, good)
            shots += good
        self._check_unique_ids(shots)
        for problem in graph_problems(shots, self._named):
            self.problems.add(problem.path, problem.message, problem.shot)
        return shots, self.problems.finish()

    def _over_the_shot_limit(self) -> set[int]:
        """Entries not expanded because the storyboard would pass MAX_SHOTS with them.

        Counted before anything is expanded; the entries that fit are still checked, so
        their errors are reported too.
        """
        made = 0
        refused: set[int] = set()
        limit = f"a storyboard may make at most {MAX_SHOTS:,} shots after foreach and matrix"
        for position, (entry, shot) in enumerate(self.entries):
            size = _fan_out_size(shot)
            if made + size <= MAX_SHOTS:
                made += size
                continue
            if shot.foreach is None and shot.matrix is None:
                later = self.entries[position:]
                refused.update(e for e, _ in later)
                after = f" and the {len(later) - 1:,} after it" if len(later) > 1 else ""
                self.problems.add(("shots", entry), f"would be shot {made + 1:,}: {limit}; "
                                  f"this entry{after} not checked")
                break
            refused.add(entry)
            if shot.foreach is not None:
                key, how = "foreach", f"{size:,} items"
            else:
                key = "matrix"
                how = " x ".join(f"{len(v):,}" for v in (shot.matrix or {}).values()) \
                    + " combinations"
            before = f" and the entries before it {made:,}, {made + size:,} in all" if made \
                else ""
            self.problems.add(("shots", entry, key), f"makes {size:,} shots ({how}){before}: "
                              f"{limit}", key=True)
        return refused

    # --- one shot --------------------------------------------------------------------------

    def _context(self, shot: Shot, item: Any, index: int) -> tuple[dict[str, Any], str]:
        context: dict[str, Any] = {**self.variables, **shot.vars, **self.cli_vars}
        fanned = shot.foreach is not None or shot.matrix is not None
        if fanned:
            context["item"] = item
            context["index"] = index
        context["snippets"] = self.snippets
        context_fp = fingerprint([self._vars_fingerprint(shot), item, index]) \
            if fanned or shot.vars else ""
        self.snippets.bind(context, context_fp)
        return context, context_fp

    def _vars_fingerprint(self, shot: Shot) -> str:
        """The digest of a shot's vars, made once per entry: YAML aliases can make them a
        million values, and digesting them again for each of 800 foreach items took minutes."""
        known = self._vars_fingerprints.get(id(shot))
        if known is None:
            known = self._vars_fingerprints[id(shot)] = fingerprint(shot.vars)
        return known

    def _build(self, entry: int, shot: Shot, item: Any, index: int) -> ShotRequest | None:
        context, context_fp = self._context(shot, item, index)
        before = self.problems.count()
        here: tuple[str | int, ...] = ("shots", entry)

        def render(text: str, path: tuple[str | int, ...], label: str | None) -> str | None:
            try:
                return self.renderer.render(text, context, context_fp)
            except TemplateProblem as exc:
                self.problems.add(path, str(exc), label)
                return None

        shot_id = render(shot.id, (*here, "id"), None)
        label = shot_id
        if shot_id is not None:
            self._named.add(shot_id)
            reason = shot_is_safe_id(shot_id)
            if reason:
                self.problems.add((*here, "id"), f"{shown(shot_id)} {reason}"
                                  if is_template(shot.id) else reason)
                shot_id = None

        raw, origin = self._merge(shot, here, label)
        slug_source = raw.get("model")
        if slug_source is None:
            self.problems.add(here, "has no model; set `model:` on the shot or in defaults",
                              label)
            return None
        slug = render(slug_source, origin["model"], label)
        if slug is None:
            return None
        endpoint = get_endpoint(slug)
        if endpoint is None:
            self.problems.add(origin["model"], f"unknown model {slug!r}"
                              + suggest(slug, ENDPOINTS) + "; known: "
                              + ", ".join(sorted(ENDPOINTS)), label)
            return None
        values: dict[str, Any] = {}
        failed: set[str] = set()
        for name, value in raw.items():
            if name == "model":
                continue
            if origin[name][0] == "defaults" and name not in endpoint.by_name:
                continue  # a default applies only where the model takes it
            spec = endpoint.by_name.get(name)
            typed = self._typed(spec, value, origin[name], render, label)
            if typed is _MISSING:
                failed.add(name)
            else:
                values[name] = typed
        if "multi_prompt" in values and origin.get("duration", ("",))[0] == "defaults":
            del values["duration"]  # a multi-shot lasts as long as its parts, not the default
        for pair in endpoint.exclusive:  # a field the shot sets beats a default it excludes
            if all(name in values for name in pair):
                from_defaults = [n for n in pair if origin[n][0] == "defaults"]
                if len(from_defaults) == 1:
                    del values[from_defaults[0]]
        images = self._images(endpoint, values, origin, label)
        frames = self._frames(endpoint, values, origin)
        for problem in check_values(endpoint, values):
            if failed and (problem.path[0] in failed or problem.message.startswith("is required")):
                continue  # already reported: the field did not render
            path = origin.get(str(problem.path[0]), (*here, problem.path[0]))
            self.problems.add((*path, *problem.path[1:]), problem.message, label)
        if self.problems.count() != before or shot_id is None:
            return None
        body = wire_body(endpoint, values)
        return ShotRequest(
            id=shot_id, entry=entry, endpoint=slug, body=body, local_images=images,
            # a shot waiting for frames has no key yet (plan/inputs.py makes it): say so
            take=shot.take,
            key=(PENDING if frames else "") + request_key(slug, body, shot.take),
            duration=effective_duration(endpoint, body), sound=bool(values.get("sound", False)),
            frames=frames)

    @staticmethod
    def _frames(endpoint: Endpoint, values: dict[str, Any],
                origin: Mapping[str, tuple[str | int, ...]]) -> tuple[FrameInput, ...]:
        """The image fields that name frames of other shots; the body holds a placeholder
        for each until the frame is known (a field the model does not take is left as it is,
        for check_values to report)."""
        found: list[FrameInput] = []
        for name, value in values.items():
            spec = endpoint.by_name.get(name)
            if isinstance(value, _FrameValue) and spec is not None:
                frame = FrameInput(name, spec.wire, value.shot, value.frame, value.at,
                                   origin[name])
                found.append(frame)
                values[name] = frame.placeholder
        return tuple(found)

    def _merge(self, shot: Shot, here: tuple[str | int, ...], label: str | None
               ) -> tuple[dict[str, Any], dict[str, tuple[str | int, ...]]]:
        raw: dict[str, Any] = {}
        origin: dict[str, tuple[str | int, ...]] = {}
        data = self.source.data if isinstance(self.source.data, dict) else {}
        written = data.get("defaults")
        for name, value in self.defaults.items():
            raw[name], origin[name] = value, ("defaults", _spelled(written, name))
        entries = data.get("shots")
        index = here[1]
        written = entries[index] if isinstance(entries, list) and isinstance(index, int) \
            else None
        for name in _REQUEST_FIELDS:
            if name in shot.model_fields_set:
                raw[name], origin[name] = getattr(shot, name), (*here, _spelled(written, name))
        for name in [n for n, v in raw.items() if v is None]:
            self.problems.add(origin[name], "is empty: give it a value, or remove the key",
                              label)
            del raw[name]
        return raw, origin

    def _typed(self, spec: FieldSpec | None, value: Any,
               path: tuple[str | int, ...], render: Any, label: str | None) -> Any:
        """The value with its templates rendered and typed as the endpoint wants it."""
        if spec is None:
            return value  # check_values reports the field the model does not take
        if spec.kind == "image" and not isinstance(value, str):
            return self._frame_value(value, path, render, label)
        if spec.kind == "multi_prompt":
            parts = []
            for i, part in enumerate(value):
                prompt = render(part.prompt, (*path, i, "prompt"), label)
                seconds = self._scalar("integer", part.duration, (*path, i, "duration"),
                                       render, label)
                if prompt is None or seconds is _MISSING:
                    return _MISSING
                parts.append({"prompt": prompt, "duration": seconds})
            return parts
        return self._scalar(spec.kind, value, path, render, label)

    def _frame_value(self, value: Any, path: tuple[str | int, ...], render: Any,
                     label: str | None) -> Any:
        """`{shot: <template>, frame: first|last}` or `{shot: ..., at: <seconds>}`, rendered."""
        shot_id = render(value.shot, (*path, "shot"), label)
        at = None
        if value.at is not None:
            at = self._scalar("number", value.at, (*path, "at"), render, label)
            if at is _MISSING:
                return _MISSING
            if not math.isfinite(at) or at < 0:
                self.problems.add((*path, "at"), f"must be a time in seconds, 0 or more, not "
                                                 f"{at:g}", label)
                return _MISSING
        if shot_id is None:
            return _MISSING
        return _FrameValue(shot_id.strip(), value.frame, at)

    def _scalar(self, kind: str, value: Any, path: tuple[str | int, ...], render: Any,
                label: str | None) -> Any:
        if isinstance(value, str):
            text = render(value, path, label)
            if text is None:
                return _MISSING
            if kind in ("text", "image") or not is_template(value):
                return text
            converted = _convert(kind, text.strip())
            if converted is _MISSING:
                self.problems.add(path, f"renders to {_short(text)}, which is not "
                                        + {"integer": "a whole number", "number": "a number",
                                           "boolean": "true or false"}[kind], label)
            return converted
        if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)  # 1 and 1.0 are one request, so one key
        return value

    def _images(self, endpoint: Endpoint, values: dict[str, Any],
                origin: Mapping[str, tuple[str | int, ...]], label: str | None
                ) -> dict[str, LocalImage]:
        found: dict[str, LocalImage] = {}
        for spec in endpoint.fields:
            reference = values.get(spec.name)
            if spec.kind != "image" or not isinstance(reference, str):
                continue
            if is_url(reference):
                continue
            path = origin[spec.name]
            if not reference.strip():
                self.problems.add(path, "is empty: give a local .png/.jpg path or an http(s) "
                                        "URL", label)
                continue
            if reference.startswith("data:") or "://" in reference:
                self.problems.add(path, "must be a local .png/.jpg path or an http(s) URL",
                                  label)
                continue
            if "\0" in reference:  # the OS refuses such a path with ValueError, not OSError
                self.problems.add(path, "must be a local .png/.jpg path or an http(s) URL; a "
                                        "path cannot hold a NUL character", label)
                continue
            try:
                image = self.inspector.inspect((self.base_dir / reference).resolve())
            except RuntimeError:  # Path.resolve on a symlink loop
                self.problems.add(path, f"cannot read image {reference}: symbolic link loop; "
                                        "give a path to a .png/.jpg file", label)
                continue
            except FileNotFoundError:
                self.problems.add(path, f"image file not found: {reference} (paths are "
                                        f"relative to the storyboard's folder)", label)
                continue
            except OSError as exc:
                self.problems.add(path, f"cannot read image {reference}: {exc.strerror}", label)
                continue
            except ImageProblem as exc:
                self.problems.add(path, f"image {reference} {exc.message}", label)
                continue
            found[spec.wire] = image
            values[spec.name] = IMAGE_DIGEST_PREFIX + image.sha256
        return found

    def _check_unique_ids(self, shots: list[ShotRequest]) -> None:
        seen: dict[str, ShotRequest] = {}
        items: dict[int, str] | None = None  # made at the first clash: clashes are rare
        for shot in shots:
            folded = shot.id.casefold()
            first = seen.setdefault(folded, shot)
            if first is not shot:
                items = self._fan_out_items(shots) if items is None else items
                also = "" if first.id == shot.id else f" as {first.id!r}"
                self.problems.add(("shots", shot.entry, "id"),
                                  f"duplicate shot id {shot.id!r}{items.get(id(shot), '')}: "
                                  f"shots[{first.entry}]{items.get(id(first), '')} has it "
                                  f"too{also} (ids must be unique, ignoring case)")

    def _fan_out_items(self, shots: list[ShotRequest]) -> dict[int, str]:
        """' (foreach item 3)' by id() of each shot a foreach or matrix made, so that two
        items of one entry are told apart (both are `shots[0]`). An entry keeps its shots in
        item order; if some of its items failed to build, the numbers are not known."""
        fanned = {entry: ("foreach item" if shot.foreach is not None else "matrix combination",
                          _fan_out_size(shot))
                  for entry, shot in self.entries if shot.foreach is not None
                  or shot.matrix is not None}
        made = collections.Counter(shot.entry for shot in shots)
        counted: collections.Counter[int] = collections.Counter()
        items: dict[int, str] = {}
        for shot in shots:
            if shot.entry in fanned:
                what, size = fanned[shot.entry]
                counted[shot.entry] += 1
                items[id(shot)] = f" ({what} {counted[shot.entry]})" \
                    if made[shot.entry] == size else f" (a {what})"
        return items


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _spelled(written: Any, name: str) -> str:
    """The key the file uses for field `name`: its own, or the API's name for it
    (`guidance_scale` for `cfg_scale`), so that errors point at and name what was written."""
    if isinstance(written, dict) and name not in written:
        for alias, field in FIELD_ALIASES.items():
            if field == name and alias in written:
                return alias
    return name


def _short(text: str, limit: int = 60) -> str:
    """repr of a rendered value, cut short: a template can render megabytes."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _convert(kind: str, text: str) -> Any:
    if kind == "integer":
        if not _INT.match(text):
            return _MISSING
        try:
            return int(text)
        except ValueError:  # more digits than Python converts (4300): no duration has them
            return _MISSING
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            return _MISSING
    lowered = text.lower()
    return {"true": True, "false": False}.get(lowered, _MISSING)
