from __future__ import annotations

import re
import subprocess
import sys

import pytest

from kling_pipeline.storyboard.endpoints import (
    ENDPOINTS,
    check_values,
    effective_duration,
    validate_body,
    wire_body,
)

SEEDS = ["kling-v3.0-pro-i2v", "kling-v3.0-std-i2v", "kling-v3.0-pro-t2v", "kling-v1.6-i2v"]


def messages(slug: str, values: dict[str, object]) -> list[str]:
    return [f"{'.'.join(map(str, p.path))}: {p.message}"
            for p in check_values(ENDPOINTS[slug], values)]


def test_seed_endpoints_and_the_two_added_ones_are_registered() -> None:
    assert set(SEEDS) | {"kling-v3.0-std-t2v", "kling-v1.6-t2v"} <= set(ENDPOINTS)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_the_4k_members_take_what_pro_takes(task: str) -> None:
    four_k, pro = ENDPOINTS[f"kling-v3.0-4k-{task}"], ENDPOINTS[f"kling-v3.0-pro-{task}"]
    assert (four_k.fields, four_k.exclusive, four_k.one_of) == (pro.fields, pro.exclusive,
                                                                 pro.one_of)
    assert four_k.price_family == "kling-v3.0-4k"


@pytest.mark.parametrize("endpoint", list(ENDPOINTS.values()), ids=list(ENDPOINTS))
def test_field_names_and_wire_names_are_unique(endpoint: object) -> None:
    fields = endpoint.fields  # type: ignore[attr-defined]
    assert len({f.name for f in fields}) == len(fields)
    assert len({f.wire for f in fields}) == len(fields)


@pytest.mark.parametrize(("slug", "bad", "good"), [
    ("kling-v3.0-pro-t2v", [2, 16], [3, 15]),
    ("kling-v3.0-std-i2v", [2, 16], [3, 15]),
    ("kling-v1.6-i2v", [3, 7, 15], [5, 10]),
    ("kling-v1.6-t2v", [7], [5, 10]),
])
def test_duration_ranges_follow_the_pages(slug: str, bad: list[int], good: list[int]) -> None:
    base: dict[str, object] = {"prompt": "p"}
    if ENDPOINTS[slug].task == "i2v":
        base["image"] = "https://example.invalid/a.png"
    for seconds in bad:
        assert any("duration" in m for m in messages(slug, {**base, "duration": seconds}))
    for seconds in good:
        assert messages(slug, {**base, "duration": seconds}) == []


@pytest.mark.parametrize(("slug", "limit"), [("kling-v3.0-pro-t2v", 2500),
                                             ("kling-v1.6-i2v", 2000)])
def test_prompt_length_limits(slug: str, limit: int) -> None:
    base: dict[str, object] = {"image": "https://x.invalid/a.png"} \
        if ENDPOINTS[slug].task == "i2v" else {}
    assert messages(slug, {**base, "prompt": "x" * limit}) == []
    [problem] = messages(slug, {**base, "prompt": "x" * (limit + 1)})
    assert f"at most {limit}" in problem
    assert messages(slug, {**base, "prompt": "x", "negative_prompt": "n" * (limit + 1)})


def test_empty_prompts_only_where_an_image_says_what_to_show() -> None:
    assert messages("kling-v1.6-i2v", {"image": "https://x/a.png", "prompt": ""})
    assert messages("kling-v3.0-pro-t2v", {"prompt": ""})  # would buy a video of nothing
    assert messages("kling-v3.0-pro-i2v", {"image": "https://x/a.png", "prompt": ""}) == []


def test_the_simulator_takes_an_empty_t2v_prompt_as_the_page_allows() -> None:
    # The page says 0..2500: the API (and so the simulator) takes "", a storyboard may not.
    assert validate_body(ENDPOINTS["kling-v3.0-pro-t2v"], {"prompt": ""}) == []
    assert validate_body(ENDPOINTS["kling-v1.6-t2v"], {"prompt": ""})  # 1..2000 on v1.6


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_cfg_scale_is_zero_to_one_everywhere(value: float) -> None:
    for slug, endpoint in ENDPOINTS.items():
        base: dict[str, object] = {"prompt": "p"}
        if endpoint.task == "i2v":
            base["image"] = "https://x/a.png"
        assert any("0..1" in m for m in messages(slug, {**base, "cfg_scale": value})), slug


@pytest.mark.parametrize(("field", "value", "said"), [
    ("cfg_scale", float("nan"), "cfg_scale: must be a number, got .nan (not a number)"),
    ("duration", float("inf"), "duration: must be a whole number, got .inf (infinity)"),
    ("duration", "five", "duration: must be a whole number, got text 'five'"),
])
def test_a_value_of_the_wrong_kind_is_named_as_yaml_writes_it(field: str, value: object,
                                                            said: str) -> None:
    """Issue 9, item 11: it said "must be a number, got number nan"."""
    assert said in messages("kling-v3.0-pro-t2v", {"prompt": "p", field: value})


def test_a_long_choice_is_cut_in_the_message() -> None:
    (message,) = [m for m in messages("kling-v3.0-pro-t2v", {"prompt": "p",
                                                             "aspect_ratio": "9" * 100_000})]
    assert len(message) < 300 and "100,000 characters" in message


def test_multi_prompt_excludes_prompt_and_end_image() -> None:
    parts = [{"prompt": "a", "duration": 3}, {"prompt": "b", "duration": 2}]
    found = messages("kling-v3.0-pro-i2v", {"image": "https://x/a.png", "prompt": "p",
                                            "end_image": "https://x/b.png",
                                            "multi_prompt": parts})
    assert any(m.startswith("multi_prompt: cannot be used together with prompt") for m in found)
    assert any("together with end_image" in m for m in found)


def test_multi_prompt_parts_are_checked_and_add_up() -> None:
    too_many = [{"prompt": "p", "duration": 2}] * 7
    assert any("takes 1..6" in m for m in messages("kling-v3.0-pro-t2v",
                                                   {"multi_prompt": too_many}))
    assert messages("kling-v3.0-pro-t2v", {"multi_prompt": [{"prompt": "p", "duration": 5}],
                                           "duration": 6})
    found = messages("kling-v3.0-pro-t2v", {"multi_prompt": [{"prompt": "", "duration": 0}]})
    assert "multi_prompt.0.prompt: must not be empty" in found
    assert "multi_prompt.0.duration: must be at least 1" in found


def test_a_part_lasting_3_0_seconds_is_a_whole_number_as_duration_5_0_is() -> None:
    # Regression: Python's json writes 3.0; the top-level duration took 5.0, a part did not.
    parts = [{"prompt": "a", "duration": 3.0}, {"prompt": "b", "duration": 2.0}]
    assert messages("kling-v3.0-pro-t2v", {"multi_prompt": parts, "duration": 5.0}) == []
    assert any("whole number" in m for m in messages(
        "kling-v3.0-pro-t2v", {"multi_prompt": [{"prompt": "a", "duration": 3.5}]}))


def test_v30_i2v_takes_no_aspect_ratio_and_t2v_takes_no_image() -> None:
    assert any("takes no aspect_ratio" in m for m in messages(
        "kling-v3.0-pro-i2v", {"image": "https://x/a.png", "prompt": "p",
                               "aspect_ratio": "16:9"}))
    assert any("takes no image" in m for m in messages(
        "kling-v3.0-pro-t2v", {"image": "https://x/a.png", "prompt": "p"}))
    assert any('"4:3" is not allowed' in m for m in messages(
        "kling-v3.0-pro-t2v", {"prompt": "p", "aspect_ratio": "4:3"}))


def test_v16_end_frame_needs_professional_mode() -> None:
    values = {"image": "https://x/a.png", "prompt": "p", "end_image": "https://x/b.png"}
    assert any("needs mode" in m for m in messages("kling-v1.6-i2v", values))
    assert messages("kling-v1.6-i2v", {**values, "mode": "Professional"}) == []
    assert any("allowed" in m for m in messages("kling-v1.6-t2v",
                                               {"prompt": "p", "mode": "Professional"}))


def test_required_fields() -> None:
    assert "image: is required by kling-v3.0-std-i2v" in messages("kling-v3.0-std-i2v",
                                                                   {"prompt": "p"})
    assert any("give prompt or multi_prompt" in m for m in messages("kling-v3.0-pro-t2v", {}))


def test_wire_body_uses_each_endpoints_field_names() -> None:
    body = wire_body(ENDPOINTS["kling-v1.6-i2v"], {"image": "https://x/a.png", "prompt": "p",
                                                   "cfg_scale": 0.3})
    assert body == {"image_url": "https://x/a.png", "prompt": "p", "guidance_scale": 0.3}


def test_multi_prompt_without_duration_sends_the_sum() -> None:
    endpoint = ENDPOINTS["kling-v3.0-pro-t2v"]
    body = wire_body(endpoint, {"multi_prompt": [{"prompt": "a", "duration": 3},
                                                 {"prompt": "b", "duration": 4}]})
    assert body["duration"] == 7
    assert effective_duration(endpoint, body) == 7
    assert effective_duration(endpoint, {"prompt": "x"}) == 5


def test_validate_body_speaks_wire_names_and_image_reasons() -> None:
    problems = validate_body(ENDPOINTS["kling-v1.6-i2v"],
                             {"image_url": "/etc/passwd", "prompt": "p", "guidance_scale": 2,
                              "bogus": 1})
    by_field = {p.path[0]: p for p in problems}
    assert by_field["image_url"].reason == "INVALID_IMAGE_FORMAT"
    assert "0..1" in by_field["guidance_scale"].message
    assert "unknown field" in by_field["bogus"].message
    assert validate_body(ENDPOINTS["kling-v3.0-pro-i2v"],
                         {"image": "data:image/png;base64,AAAA", "prompt": "p"}) == []


def test_an_image_url_scheme_may_be_in_capitals() -> None:
    assert validate_body(ENDPOINTS["kling-v3.0-pro-i2v"],
                         {"image": "HTTPS://example.com/a.png", "prompt": "p"}) == []
    assert validate_body(ENDPOINTS["kling-v3.0-pro-i2v"],
                         {"image": "ftp://example.com/a.png", "prompt": "p"})


def test_the_endpoint_table_in_the_docs_is_what_its_snippet_prints(
        pytestconfig: pytest.Config) -> None:
    """docs/storyboard.md says its table is generated from the registry: keep it so."""
    doc = (pytestconfig.rootpath / "docs" / "storyboard.md").read_text(encoding="utf-8")
    snippet = re.search(r"The snippet that produced the table[^\n]*\n\n```python\n(.*?)```",
                        doc, re.S)
    assert snippet is not None
    printed = subprocess.run([sys.executable, "-c", snippet.group(1)], capture_output=True,
                             text=True, check=True).stdout
    assert printed.strip() and printed in doc, "regenerate the table with the snippet"
