"""Load a storyboard file into rendered, keyed shots, or fail with every problem located.

Importing this module is cheap: pydantic, the models, Jinja and the renderer are imported when
a storyboard is loaded, so a command that needs only its paths (`gc`: where the cache is; `apply`:
where the lock file is) does not pay for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kling_pipeline.errors import Diagnostic, StoryboardError

if TYPE_CHECKING:
    from kling_pipeline.storyboard.memo import JsonMemo
    from kling_pipeline.storyboard.models import Shot, StoryboardHead
    from kling_pipeline.storyboard.render import Entry, ShotRequest
    from kling_pipeline.storyboard.settings import BoardSettings
    from kling_pipeline.storyboard.yamlsource import YamlSource

CACHE_DIR_NAME = ".kling-cache"
# Top-level parts every shot's rendering depends on; with an error there, shots are not checked.
_RENDER_INPUTS = frozenset({"vars", "snippets", "defaults", "shots", ""})


@dataclass(frozen=True)
class LoadedStoryboard:
    """A valid storyboard and its shots in storyboard order.

    `settings` are plain values; `board`, the pydantic head, is validated when first asked
    for on a warm run (it imports pydantic: commands should read `settings`).
    """

    path: Path
    settings: BoardSettings
    shots: list[ShotRequest]
    head: Callable[[], StoryboardHead] = field(repr=False, compare=False)

    @cached_property
    def board(self) -> StoryboardHead:
        return self.head()


def default_cache_dir(storyboard: Path) -> Path:
    return storyboard.resolve().parent / CACHE_DIR_NAME


def lock_path_for(storyboard: Path) -> Path:
    """The lock file beside the storyboard: `lighthouse.yaml` -> `lighthouse.lock.json`."""
    return storyboard.with_name(storyboard.stem + ".lock.json")


def _structure(source: YamlSource) -> tuple[StoryboardHead | None, list[tuple[int, Shot]],
                                            list[Diagnostic]]:
    """Validate the structure; on errors inside shots only, keep the good shots going."""
    from pydantic import ValidationError

    from kling_pipeline.storyboard.models import Shot, Storyboard, StoryboardHead, extension_keys
    from kling_pipeline.storyboard.validation import diagnostics_from
    from kling_pipeline.textsafe import described

    if not isinstance(source.data, dict):
        what = "empty" if source.data is None else described(source.data)
        return None, [], [Diagnostic(source.display, 1, 1, "",
                                     f"a storyboard must be a mapping with version, name and "
                                     f"shots; this file is {what}")]
    data = extension_keys(source.data)
    try:
        board = Storyboard.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = diagnostics_from(errors, source)
        in_shots = {e["loc"][1] for e in errors
                    if len(e["loc"]) >= 2 and e["loc"][0] == "shots"
                    and isinstance(e["loc"][1], int)}
        elsewhere = {str(e["loc"][0]) if e["loc"] else "" for e in errors
                     if not (len(e["loc"]) >= 2 and e["loc"][0] == "shots"
                             and isinstance(e["loc"][1], int))}
        if elsewhere & _RENDER_INPUTS or not isinstance(data.get("shots"), list):
            return None, [], problems  # shots cannot be rendered without these
        # Keep checking the shots: an error in the provider block must not hide theirs.
        kept = {k: v for k, v in data.items()  # a key that is not text is an error itself
                if isinstance(k, str) and k not in elsewhere and k != "shots"}
        head = StoryboardHead.model_validate({**kept, "version": 1,
                                              "name": kept.get("name", "storyboard")})
        good = [(i, Shot.model_validate(raw)) for i, raw in enumerate(data["shots"])
                if i not in in_shots]
        return head, good, problems
    return board, list(enumerate(board.shots)), []


def load_storyboard(path: Path, *, cli_vars: Mapping[str, str] | None = None,
                    cache_dir: Path | None = None, use_cache: bool = True,
                    jinja_version: str | None = None) -> LoadedStoryboard:
    """Parse, validate, expand, render and key a storyboard; StoryboardError lists all problems.

    `cache_dir` holds the memos of rendered templates and image digests (default:
    `.kling-cache/` beside the storyboard); `use_cache=False` keeps nothing between runs.
    `jinja_version` is the version the memos are checked against, the installed Jinja's when
    None: a seam for the test that another Jinja discards them.
    """
    from kling_pipeline.speed import gc_paused
    from kling_pipeline.storyboard.templating import render_scheme, scheme_for

    scheme = render_scheme() if jinja_version is None else scheme_for(jinja_version)
    with gc_paused():
        return _load(path, cli_vars, cache_dir, use_cache, scheme)


def _load(path: Path, cli_vars: Mapping[str, str] | None, cache_dir: Path | None,
          use_cache: bool, scheme: str) -> LoadedStoryboard:
    from kling_pipeline.storyboard.localimages import ImageInspector
    from kling_pipeline.storyboard.memo import JsonMemo
    from kling_pipeline.storyboard.render import StoryboardRenderer
    from kling_pipeline.storyboard.shotmemo import ShotMemo, memo_version
    from kling_pipeline.storyboard.templating import TemplateRenderer, fingerprint
    from kling_pipeline.storyboard.yamlsource import load_yaml

    source = load_yaml(path)
    folder = (cache_dir or default_cache_dir(path)) if use_cache else None
    structures = _structure_memo(folder)
    known = _known_structure(structures, source)
    if known is not None:
        settings, head, entries, problems = known
    else:
        settings, head, entries, problems = _validated(source, structures)
    template_memo = JsonMemo(folder / "templates.json" if folder else None, scheme)
    image_memo = JsonMemo(folder / "images.json" if folder else None, "1")
    shot_memo_file = JsonMemo(folder / "shots.json" if folder else None, memo_version())
    variables: dict[str, Any] = dict(cli_vars or {})
    world = fingerprint([scheme, settings.vars, variables, settings.snippets])
    renderer = TemplateRenderer(template_memo, world)
    inspector = ImageInspector(image_memo)
    defaults = source.data.get("defaults")
    shot_memo = ShotMemo(shot_memo_file, inspector, [str(path.parent), world, defaults])
    shots, render_problems = StoryboardRenderer(
        source, head, settings.vars, settings.snippets, entries, variables, renderer,
        inspector).run(shot_memo)
    for memo in (template_memo, image_memo, shot_memo_file, structures):
        memo.save()
    problems += render_problems
    if problems:
        raise StoryboardError(problems)
    return LoadedStoryboard(path, settings, shots, head)


_Structure = tuple["BoardSettings", "Callable[[], StoryboardHead]", "list[Entry]",
                   "list[Diagnostic]"]


def _structure_memo(folder: Path | None) -> JsonMemo:
    """The memo of files whose structure validated (structmemo.py); none without a version."""
    from kling_pipeline.storyboard.memo import JsonMemo
    from kling_pipeline.storyboard.structmemo import memo_version

    version = memo_version()
    usable = folder is not None and version is not None
    return JsonMemo(folder / "structures.json" if usable and folder else None, version or "",
                    max_entries=100)


def _known_structure(memo: JsonMemo, source: YamlSource) -> _Structure | None:
    """Settings, lazy head and entries of a file whose exact bytes validated before, with no
    pydantic; None when the memo does not know the file."""
    from kling_pipeline.storyboard.render import Entry
    from kling_pipeline.storyboard.settings import BoardSettings

    known = memo.get(source.digest) if memo.path is not None else None
    if not isinstance(known, dict) or not isinstance(source.data, dict):
        return None
    settings = BoardSettings.from_json(known)
    raw_shots = source.data.get("shots")
    entries = [Entry(i, raw) for i, raw in enumerate(raw_shots if isinstance(raw_shots, list)
                                                     else [])]
    return settings, lambda: _head_of(source), entries, []


def _head_of(source: YamlSource) -> StoryboardHead:
    """The head of a file known valid, validated alone (what validating it whole gives)."""
    from kling_pipeline.storyboard.models import StoryboardHead, extension_keys

    data = extension_keys(source.data)
    return StoryboardHead.model_validate({k: v for k, v in data.items() if k != "shots"})


def _validated(source: YamlSource, memo: JsonMemo) -> _Structure:
    """Validate with the models; a file with no problem is recorded in the memo."""
    from kling_pipeline.storyboard.render import Entry
    from kling_pipeline.storyboard.settings import BoardSettings

    head, shots, problems = _structure(source)
    if head is None:
        raise StoryboardError(problems)
    settings = BoardSettings.of(head)
    raw_shots = source.data.get("shots") if isinstance(source.data, dict) else None
    raws = raw_shots if isinstance(raw_shots, list) else []
    entries = [Entry(i, raws[i] if i < len(raws) else None, shot) for i, shot in shots]
    if not problems and memo.path is not None:
        recorded = settings.to_json()
        if recorded is not None:
            memo.put(source.digest, recorded)
    return settings, lambda: head, entries, problems


def parse_var(text: str) -> tuple[str, str]:
    """`--var key=value` -> (key, value); ValueError with the reason otherwise."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ValueError(f"{text!r} is not key=value with a variable name as key")
    if key in ("item", "index", "snippets"):
        raise ValueError(f"{key!r} is a name the tool sets itself; choose another")
    return key, value
