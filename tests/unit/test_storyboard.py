from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.paths import EXAMPLES

from kling_pipeline.errors import StoryboardError
from kling_pipeline.key import IMAGE_DIGEST_PREFIX
from kling_pipeline.storyboard.load import load_storyboard


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_load(example: Path, tmp_path: Path) -> None:
    loaded = load_storyboard(example, cache_dir=tmp_path)
    assert loaded.shots
    # a shot that takes a frame of another has its key once the frame is known (plan/inputs)
    assert all(len(s.key.removeprefix("pending-" if s.frames else "")) == 64
               for s in loaded.shots)


def test_examples_cover_the_four_seed_endpoints(tmp_path: Path) -> None:
    used = {s.endpoint for e in EXAMPLES for s in load_storyboard(e, cache_dir=tmp_path).shots}
    assert {"kling-v3.0-pro-i2v", "kling-v3.0-std-i2v", "kling-v3.0-pro-t2v",
            "kling-v1.6-i2v"} <= used


LIGHTHOUSE = """version: 1
name: lighthouse
vars: {keeper: an old keeper, grade: teal}
snippets:
  look: "cinematic, {{ grade }} grade"
  twice: "{{ snippets.look }} / {{ snippets.look }}"
defaults: {model: kling-v3.0-pro-t2v, duration: 5, aspect_ratio: "16:9", negative_prompt: blur}
shots:
  - id: establishing
    prompt: "Aerial shot, {{ snippets.twice }}"
  - id: keeper
    model: kling-v3.0-pro-i2v
    image: keeper.png
    vars: {keeper: a young keeper}
    prompt: "{{ keeper | capitalize }} climbs"
  - id: "wave-{{ item.n }}-{{ index }}"
    foreach: [{n: 1, mood: calm}, {n: 2, mood: rough}]
    prompt: "A {{ item.mood }} wave"
    duration: "{{ 3 + item.n }}"
    sound: "{{ item.n > 1 }}"
  - id: "{{ item.lens }}-{{ item.time }}"
    matrix: {lens: [wide, tele], time: [day, night]}
    prompt: "{{ item.lens }} lens at {{ item.time }}"
"""


@pytest.fixture
def lighthouse(write_storyboard: Callable[[str], Path],
               make_image: Callable[..., Path]) -> Path:
    make_image("keeper.png", 640, 480)
    return write_storyboard(LIGHTHOUSE)


def test_rendering_fan_out_defaults_and_snippets(lighthouse: Path) -> None:
    shots = {s.id: s for s in load_storyboard(lighthouse, use_cache=False).shots}
    assert list(shots) == ["establishing", "keeper", "wave-1-1", "wave-2-2", "wide-day",
                           "wide-night", "tele-day", "tele-night"]
    assert shots["establishing"].body == {
        "prompt": "Aerial shot, cinematic, teal grade / cinematic, teal grade",
        "duration": 5, "aspect_ratio": "16:9", "negative_prompt": "blur"}
    keeper = shots["keeper"]
    assert keeper.endpoint == "kling-v3.0-pro-i2v"
    assert "aspect_ratio" not in keeper.body  # a default applies only where the model takes it
    assert keeper.body["prompt"] == "A young keeper climbs"  # shot vars over storyboard vars
    assert keeper.body["image"].startswith(IMAGE_DIGEST_PREFIX)
    assert keeper.local_images["image"].width == 640
    assert shots["wave-1-1"].body["duration"] == 4 and shots["wave-2-2"].body["sound"] is True
    assert shots["wave-1-1"].body["sound"] is False


def test_cli_vars_win_over_shot_and_storyboard_vars(lighthouse: Path) -> None:
    shots = {s.id: s for s in load_storyboard(
        lighthouse, cli_vars={"keeper": "a robot", "grade": "mono"}, use_cache=False).shots}
    assert shots["keeper"].body["prompt"] == "A robot climbs"
    assert "mono grade" in shots["establishing"].body["prompt"]


def test_memos_give_the_same_shots_and_follow_every_input(lighthouse: Path,
                                                          tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fresh = load_storyboard(lighthouse, use_cache=False).shots
    assert load_storyboard(lighthouse, cache_dir=cache).shots == fresh
    assert load_storyboard(lighthouse, cache_dir=cache).shots == fresh  # from the memos
    assert {p.name for p in cache.iterdir()} == {"templates.json", "images.json", "shots.json",
                                                 "structures.json"}
    # a --var, a storyboard var and an image edit all reach the keys despite the memos
    changed = load_storyboard(lighthouse, cache_dir=cache, cli_vars={"grade": "red"}).shots
    assert changed[0].key != fresh[0].key
    lighthouse.write_text(LIGHTHOUSE.replace("an old keeper, grade: teal",
                                             "an old keeper, grade: green"))
    assert load_storyboard(lighthouse, cache_dir=cache).shots[0].key != fresh[0].key
    from PIL import Image

    Image.new("RGB", (640, 480), (200, 0, 0)).save(tmp_path / "keeper.png")
    os.utime(tmp_path / "keeper.png", ns=(1, 1))  # any change of mtime or size is seen
    again = {s.id: s for s in load_storyboard(lighthouse, cache_dir=cache).shots}
    assert again["keeper"].key != {s.id: s for s in fresh}["keeper"].key


def test_unchanged_images_are_not_read_again(lighthouse: Path, tmp_path: Path) -> None:
    from kling_pipeline.storyboard.localimages import ImageInspector
    from kling_pipeline.storyboard.memo import JsonMemo

    memo_path = tmp_path / "images.json"
    first = ImageInspector(JsonMemo(memo_path, "1"))
    image = first.inspect(tmp_path / "keeper.png")
    first.memo.save()
    second = ImageInspector(JsonMemo(memo_path, "1"))
    assert second.inspect(tmp_path / "keeper.png") == image
    assert (first.reads, second.reads) == (1, 0)
    (tmp_path / "keeper.png").write_bytes((tmp_path / "keeper.png").read_bytes() + b"\0")
    third = ImageInspector(JsonMemo(memo_path, "1"))
    assert third.inspect(tmp_path / "keeper.png").sha256 != image.sha256
    assert third.reads == 1


def test_broken_memo_files_are_ignored(lighthouse: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("templates.json", "images.json", "shots.json"):
        (cache / name).write_text("{not json")
    assert load_storyboard(lighthouse, cache_dir=cache).shots == \
        load_storyboard(lighthouse, use_cache=False).shots


def test_multi_prompt_shot_ignores_the_default_duration(
        write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard("""version: 1
name: multi
defaults: {model: kling-v3.0-pro-t2v, duration: 5}
shots:
  - id: m
    multi_prompt:
      - {prompt: "one", duration: 3}
      - {prompt: "{{ 'two' }}", duration: "{{ 1 + 3 }}"}
""")
    [shot] = load_storyboard(path, use_cache=False).shots
    assert shot.body == {"multi_prompt": [{"prompt": "one", "duration": 3},
                                          {"prompt": "two", "duration": 4}], "duration": 7}
    assert shot.duration == 7


def test_v16_fields_go_out_under_their_wire_names(write_storyboard: Callable[[str], Path],
                                                  make_image: Callable[..., Path]) -> None:
    make_image("a.jpg", 400, 600, "JPEG")
    path = write_storyboard("""version: 1
name: v16
shots:
  - {id: s, model: kling-v1.6-i2v, mode: Professional, image: a.jpg, end_image: a.jpg,
     prompt: p, cfg_scale: 0.7}
""")
    [shot] = load_storyboard(path, use_cache=False).shots
    assert set(shot.body) == {"mode", "image_url", "end_image_url", "prompt", "guidance_scale"}
    assert set(shot.local_images) == {"image_url", "end_image_url"}


def test_the_api_pages_names_are_the_same_fields_and_the_same_key(
        write_storyboard: Callable[[str], Path], make_image: Callable[..., Path]) -> None:
    make_image("a.jpg", 400, 600, "JPEG")
    ours = write_storyboard("""version: 1
name: v16
defaults: {cfg_scale: 0.4}
shots:
  - {id: s, model: kling-v1.6-i2v, mode: Professional, image: a.jpg, end_image: a.jpg,
     prompt: p, cfg_scale: 0.7}
""", "ours.yaml")
    pages = write_storyboard("""version: 1
name: v16
defaults: {guidance_scale: 0.4}
shots:
  - {id: s, model: kling-v1.6-i2v, mode: Professional, image_url: a.jpg, end_image_url: a.jpg,
     prompt: p, guidance_scale: 0.7}
""", "pages.yaml")
    [mine] = load_storyboard(ours, use_cache=False).shots
    [theirs] = load_storyboard(pages, use_cache=False).shots
    assert theirs.body == mine.body and theirs.key == mine.key
    assert theirs.body["guidance_scale"] == 0.7, "the shot's own value beats the default"


def test_nondeterministic_template_helpers_are_not_available(
        write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard("""version: 1
name: rnd
defaults: {model: kling-v3.0-pro-t2v}
shots:
  - {id: a, prompt: "{{ ['x', 'y'] | random }}"}
  - {id: b, prompt: "{{ lipsum() }}"}
""")
    with pytest.raises(StoryboardError) as caught:
        load_storyboard(path, use_cache=False)
    text = str(caught.value)
    assert "shots[0] (a).prompt" in text and "random" in text
    assert "shots[1] (b).prompt" in text and "lipsum" in text


def test_local_images_are_sent_as_data_uris_of_the_planned_bytes(lighthouse: Path,
                                                                 tmp_path: Path) -> None:
    import base64

    from kling_pipeline.storyboard.images import ImageProblem
    from kling_pipeline.storyboard.localimages import body_to_send

    keeper = next(s for s in load_storyboard(lighthouse, use_cache=False).shots
                  if s.id == "keeper")
    body = body_to_send(keeper.body, keeper.local_images)
    head, payload = body["image"].split(",", 1)
    assert head == "data:image/png;base64"
    assert base64.b64decode(payload) == (tmp_path / "keeper.png").read_bytes()
    assert {k: v for k, v in body.items() if k != "image"} == \
        {k: v for k, v in keeper.body.items() if k != "image"}
    (tmp_path / "keeper.png").write_bytes(b"changed since the plan")
    with pytest.raises(ImageProblem, match="changed after it was planned"):
        body_to_send(keeper.body, keeper.local_images)


def test_a_shots_own_field_beats_a_default_it_excludes(
        write_storyboard: Callable[[str], Path], make_image: Callable[..., Path]) -> None:
    make_image("a.png")
    path = write_storyboard("""version: 1
name: excl
defaults: {model: kling-v3.0-pro-i2v, image: a.png, prompt: default prompt, end_image: a.png}
shots:
  - id: multi
    multi_prompt: [{prompt: one, duration: 3}, {prompt: two, duration: 3}]
  - id: plain
""")
    shots = {s.id: s for s in load_storyboard(path, use_cache=False).shots}
    assert set(shots["multi"].body) == {"image", "multi_prompt", "duration"}
    assert set(shots["plain"].body) == {"image", "prompt", "end_image"}


def test_lock_and_memo_files_follow_the_umask(tmp_path: Path) -> None:
    from kling_pipeline.fsutil import atomic_write_bytes

    atomic_write_bytes(tmp_path / "f.json", b"{}")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_fully_memoised_run_keeps_the_template_memo(lighthouse: Path, tmp_path: Path) -> None:
    import json

    cache = tmp_path / "cache"
    load_storyboard(lighthouse, cache_dir=cache)
    before = json.loads((cache / "templates.json").read_text())["entries"]
    load_storyboard(lighthouse, cache_dir=cache)  # every entry from shots.json
    lighthouse.write_text(LIGHTHOUSE.replace("A {{ item.mood }} wave", "A {{ item.mood }} sea"))
    load_storyboard(lighthouse, cache_dir=cache)  # one entry re-rendered
    after = json.loads((cache / "templates.json").read_text())["entries"]
    assert before and set(before) <= set(after)


def test_an_image_url_may_spell_its_scheme_in_capitals(
        write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard("""version: 1
name: caps
shots:
  - {id: s, model: kling-v3.0-pro-i2v, image: "HTTPS://example.com/a.png", prompt: p}
""")
    [shot] = load_storyboard(path, use_cache=False).shots
    assert shot.body["image"] == "HTTPS://example.com/a.png" and not shot.local_images


def test_a_snippet_may_be_named_like_a_mapping_method(
        write_storyboard: Callable[[str], Path]) -> None:
    # Regression: `{{ snippets.items }}` printed "<bound method ...>" into the prompt.
    path = write_storyboard("""version: 1
name: names
snippets: {items: "a lamp", keys: "a key", values: "a coin", get: "a hat", bind: "a rope"}
shots:
  - id: s
    model: kling-v3.0-pro-t2v
    prompt: "{{ snippets.items }}, {{ snippets.keys }}, {{ snippets['values'] }},
      {{ snippets.get }}, {{ snippets.bind }}"
""")
    [shot] = load_storyboard(path, use_cache=False).shots
    assert shot.body["prompt"] == "a lamp, a key, a coin, a hat, a rope"  # YAML folds the line


def test_the_jinja_version_is_read_without_importing_jinja(tmp_path: Path) -> None:
    import jinja2

    from kling_pipeline.storyboard.templating import jinja_version, render_scheme

    assert render_scheme() == f"1/jinja-{jinja2.__version__}"  # as before: old memos still hit
    fake = tmp_path / "__init__.py"
    fake.write_text('"""A Jinja."""\nfrom .x import y\n\n__version__ = "99.1.0"\n')
    assert jinja_version(fake) == "99.1.0"
    fake.write_text("__version__ = compute()\n")  # not a literal: Jinja itself is asked
    assert jinja_version(fake) == jinja2.__version__


def test_another_jinja_discards_the_memos(lighthouse: Path, tmp_path: Path) -> None:
    import json

    import jinja2

    cache = tmp_path / "cache"
    fresh = load_storyboard(lighthouse, cache_dir=cache).shots
    memo = json.loads((cache / "templates.json").read_text())
    assert memo["version"] == f"1/jinja-{jinja2.__version__}"
    other = load_storyboard(lighthouse, cache_dir=cache, jinja_version="99.1.0").shots
    assert other == fresh  # rendered again, the same
    assert json.loads((cache / "templates.json").read_text())["version"] == "1/jinja-99.1.0"
    shots = json.loads((cache / "shots.json").read_text())["entries"]
    assert len(shots) == 2 * len({s.entry for s in fresh})  # no entry was taken from the memo


def test_a_known_valid_file_is_not_validated_again(lighthouse: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from support.paths import ROOT

    cache = tmp_path / "cache"
    cold = load_storyboard(lighthouse, cache_dir=cache)
    warm = load_storyboard(lighthouse, cache_dir=cache)
    assert (warm.shots, warm.settings) == (cold.shots, cold.settings)
    assert warm.board.model_dump() == cold.board.model_dump(exclude={"shots"})
    run = ("import json, sys; from pathlib import Path\n"
           "from kling_pipeline.storyboard.load import load_storyboard\n"
           "loaded = load_storyboard(Path(sys.argv[1]), cache_dir=Path(sys.argv[2]))\n"
           "print(json.dumps([loaded.settings.name, 'pydantic' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", run, str(lighthouse), str(cache)],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert json.loads(done.stdout) == ["lighthouse", False]
    # one changed byte: validated again, every error found
    lighthouse.write_text(LIGHTHOUSE.replace("duration: 5,", "duration: 5, colour: red,"))
    with pytest.raises(StoryboardError, match="colour"):
        load_storyboard(lighthouse, cache_dir=cache)


def test_the_light_tables_match_the_models() -> None:
    from kling_pipeline.plan.pricing import DEFAULT_PRICES
    from kling_pipeline.storyboard.fieldnames import REQUEST_FIELDS
    from kling_pipeline.storyboard.models import PRICE_NAMES, ShotFields

    assert tuple(ShotFields.model_fields) == REQUEST_FIELDS
    assert DEFAULT_PRICES.keys() <= PRICE_NAMES
