from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from kling_pipeline.key import KEY_SCHEME, canonical_json, request_key
from kling_pipeline.storyboard.load import load_storyboard

BODY = {"prompt": "A lighthouse at dusk", "duration": 5, "aspect_ratio": "16:9"}


def test_the_key_is_sha256_of_the_documented_canonical_json() -> None:
    # docs/key.md spells this byte string out; changing it re-bills every user.
    material = (b'{"body":{"aspect_ratio":"16:9","duration":5,"prompt":"A lighthouse at dusk"},'
                b'"endpoint":"kling-v3.0-pro-t2v","scheme":1}')
    assert KEY_SCHEME == 1
    assert request_key("kling-v3.0-pro-t2v", BODY) == hashlib.sha256(material).hexdigest()
    assert request_key("kling-v3.0-pro-t2v", BODY) == \
        "655bedafedf1a5704627c90987415a82b1ff374b60e08e288f1c19adbd500e56"


def test_take_changes_the_key_but_take_one_is_no_take() -> None:
    assert request_key("kling-v3.0-pro-t2v", BODY, take=1) == request_key("kling-v3.0-pro-t2v",
                                                                          BODY)
    assert request_key("kling-v3.0-pro-t2v", BODY, take=2) != request_key("kling-v3.0-pro-t2v",
                                                                          BODY)


def test_canonical_json_ignores_key_order_and_keeps_unicode() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == canonical_json({"a": "é", "b": 1})
    assert canonical_json({"a": "é"}) == '{"a":"é"}'.encode()


SHOTS = """version: 1
name: keys
provider: {base_url: "%s"}
defaults: {model: kling-v3.0-pro-t2v}
shots:
%s
"""


def keys_of(path: Path) -> dict[str, str]:
    return {s.id: s.key for s in load_storyboard(path, use_cache=False).shots}


def test_renaming_reordering_and_changing_router_keep_the_keys(
        write_storyboard: Callable[[str], Path]) -> None:
    first = keys_of(write_storyboard(SHOTS % ("https://api.novita.ai", """
  - {id: a, prompt: one}
  - {id: b, prompt: two}""")))
    second = keys_of(write_storyboard(SHOTS % ("https://router.example", """
  - {id: second, prompt: two}
  - {id: first, prompt: one}""")))
    assert first["a"] == second["first"] and first["b"] == second["second"]


def test_equal_numbers_written_differently_are_one_request(
        write_storyboard: Callable[[str], Path]) -> None:
    path = write_storyboard(SHOTS % ("https://api.novita.ai", """
  - {id: a, prompt: p, cfg_scale: 1}
  - {id: b, prompt: p, cfg_scale: 1.0}
  - {id: c, prompt: p, cfg_scale: "{{ 0.5 * 2 }}"}
  - {id: d, prompt: p, cfg_scale: 1, take: 2}"""))
    shots = {s.id: s for s in load_storyboard(path, use_cache=False).shots}
    assert shots["a"].body == shots["b"].body == shots["c"].body == {"prompt": "p",
                                                                     "cfg_scale": 1.0}
    assert shots["a"].key == shots["b"].key == shots["c"].key != shots["d"].key


def test_a_local_image_is_keyed_by_its_bytes_not_its_path(
        write_storyboard: Callable[[str], Path], make_image: Callable[..., Path]) -> None:
    make_image("a.png")
    make_image("copy/b.png")
    keys = keys_of(write_storyboard("""version: 1
name: img
defaults: {model: kling-v3.0-pro-i2v, prompt: p}
shots:
  - {id: a, image: a.png}
  - {id: b, image: copy/b.png}
"""))
    assert keys["a"] == keys["b"]
