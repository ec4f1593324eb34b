from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from support.paths import EXAMPLES, ROOT

from kling_pipeline.cli import main
from kling_pipeline.storyboard.models import storyboard_schema

SCHEMA_FILE = ROOT / "schemas" / "storyboard.schema.json"


def test_checked_in_schema_is_current() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == storyboard_schema(), \
        "schemas/storyboard.schema.json is stale: run `kling-pipeline schema -o " \
        "schemas/storyboard.schema.json`"


def test_schema_command_prints_the_same_schema(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == storyboard_schema()
    out = tmp_path / "s.json"
    assert CliRunner().invoke(main, ["schema", "-o", str(out)]).exit_code == 0
    assert out.read_text() == SCHEMA_FILE.read_text()


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_validate_with_an_independent_validator(example: Path) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(example.read_text()))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_point_editors_at_the_schema(example: Path) -> None:
    first = example.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../../schemas/storyboard.schema.json"
    assert (example.parent / "../../schemas/storyboard.schema.json").resolve() == SCHEMA_FILE


@pytest.mark.parametrize("broken", [
    {"version": 1, "name": "x", "shots": [{"id": "a", "promt": "typo"}]},
    {"version": 2, "name": "x", "shots": [{"id": "a"}]},
    {"version": 1, "name": "x", "shots": [{"id": "a", "duration": "five"}]},
    {"version": 1, "name": "x", "shots": [{"id": "a", "model": "kling-v9"}]},
    {"version": 1, "name": "x", "shots": []},
    {"version": 1, "name": "x", "shots": [{"id": "a", "prompt": None}]},
    {"version": 1, "name": "x", "shots": [{"id": "a", "cfg_scale": 1, "guidance_scale": 1}]},
    {"version": 1, "name": "x", "defaults": {"image": "a.png", "image_url": "a.png"},
     "shots": [{"id": "a"}]},
])
def test_schema_rejects_what_the_tool_rejects(broken: dict[str, object]) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert list(validator.iter_errors(broken))


def test_schema_accepts_templates_in_typed_fields_and_x_keys() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    validator.validate({"version": 1, "name": "x", "x-anchors": {"a": 1}, "shots": [
        {"id": "{{ item }}", "foreach": [1], "duration": "{{ item + 4 }}",
         "model": "{{ 'kling-v3.0-pro-t2v' }}", "sound": "{{ true }}"}]})


def test_schema_accepts_the_api_pages_names_for_fields() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    validator.validate({"version": 1, "name": "x", "defaults": {"guidance_scale": 0.5},
                        "shots": [{"id": "a", "model": "kling-v1.6-i2v", "image_url": "a.png",
                                   "end_image_url": "b.png", "prompt": "p"}]})
