"""The manifest's text, its chained shots' inputs, and the cheap read of whose render a
folder holds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from kling_pipeline.output.manifest import (
    MANIFEST_VERSION,
    Manifest,
    ManifestInput,
    ManifestShot,
    manifest_json,
    manifest_storyboard,
    read_manifest,
    write_manifest,
)


def manifest(name: str = "lighthouse", shots: int = 3) -> Manifest:
    return Manifest(storyboard=name, key_scheme=1, simulated=False, page="index.html",
                    final=None, shots=[
                        ManifestShot(position=i, id=f"s{i}", status="pending",
                                     endpoint="kling-v3.0-pro-t2v", key="k" * 64, task_id=None,
                                     prompt='a "storyboard": "other" in a prompt',
                                     multi_prompt=None, planned_duration=5.0)
                        for i in range(1, shots + 1)])


def test_the_owner_is_read_from_the_first_lines_of_our_own_manifest(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_manifest(path, manifest("lighthouse", shots=2000))
    assert path.stat().st_size > 100_000
    assert manifest_storyboard(path) == "lighthouse" == read_manifest(path).storyboard  # type: ignore[union-attr]


def test_a_manifest_in_another_layout_is_read_whole(tmp_path: Path) -> None:
    """Written compactly, or with the keys in another order: the head says nothing, so
    the whole file decides (and a prompt mentioning "storyboard" cannot pass for it)."""
    ours = tmp_path / "ours.json"
    write_manifest(ours, manifest("sneaker-ad"))
    data = json.loads(ours.read_text())
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(data, separators=(",", ":")))
    assert manifest_storyboard(compact) == "sneaker-ad"
    reordered = tmp_path / "reordered.json"
    reordered.write_text(json.dumps({"shots": data["shots"], **{k: v for k, v in data.items()
                                                                if k != "shots"}}, indent=2))
    assert manifest_storyboard(reordered) == "sneaker-ad"


def test_an_unreadable_manifest_names_no_owner(tmp_path: Path) -> None:
    assert manifest_storyboard(tmp_path / "missing.json") is None
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "manifest_version": 1,\n  "storyboard": ')
    assert manifest_storyboard(broken) is None


def chained() -> Manifest:
    """Shot 2 starts on the last frame of shot 1 (known, in the folder) and ends on a frame
    of shot 3 that is not known yet."""
    value = manifest("chain", shots=3)
    edges = [ManifestInput(field="image", shot="s1", frame="last", at=None, sha256="f" * 64,
                           file="frames/002-s2-image.png"),
             ManifestInput(field="end_image", shot="s3", frame=None, at=2.5, sha256=None,
                           file=None)]
    value.shots[1] = replace(value.shots[1], inputs=edges)
    return value


# The text of a one-shot manifest as written before `inputs` existed: a storyboard without
# chains must keep exactly these bytes (scripts diff them, folders keep them in git).
BEFORE_INPUTS = """{
  "manifest_version": 1,
  "storyboard": "lighthouse",
  "key_scheme": 1,
  "simulated": false,
  "page": "index.html",
  "final": null,
  "shots": [
    {
      "position": 1,
      "id": "s1",
      "status": "pending",
      "endpoint": "kling-v3.0-pro-t2v",
      "key": "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
      "task_id": null,
      "prompt": "a \\"storyboard\\": \\"other\\" in a prompt",
      "multi_prompt": null,
      "planned_duration": 5.0,
      "file": null,
      "thumbnail": null,
      "duration": null,
      "size": null,
      "sha256": null,
      "width": null,
      "height": null,
      "start": null,
      "error": null
    }
  ]
}
"""


def test_a_manifest_without_chains_is_the_same_bytes_as_before_inputs(tmp_path: Path) -> None:
    assert MANIFEST_VERSION == 1
    assert manifest_json(manifest(shots=1)) == BEFORE_INPUTS
    path = tmp_path / "manifest.json"
    path.write_text(BEFORE_INPUTS)
    read = read_manifest(path)  # a manifest an older version wrote is read as it was
    assert read is not None and read == manifest(shots=1) and read.shots[0].inputs is None


def test_inputs_are_written_last_only_where_there_are_some_and_read_back(
        tmp_path: Path) -> None:
    value = chained()
    data = json.loads(manifest_json(value))
    first, second, _ = data["shots"]
    assert "inputs" not in first
    assert list(second)[-2:] == ["error", "inputs"]
    assert second["inputs"] == [
        {"field": "image", "shot": "s1", "frame": "last", "at": None, "sha256": "f" * 64,
         "file": "frames/002-s2-image.png"},
        {"field": "end_image", "shot": "s3", "frame": None, "at": 2.5, "sha256": None,
         "file": None}]
    path = tmp_path / "manifest.json"
    write_manifest(path, value)
    assert read_manifest(path) == value
    assert manifest_storyboard(path) == "chain"


def test_the_frames_in_the_folder_are_named_among_its_files() -> None:
    assert chained().files() == {"index.html", "frames/002-s2-image.png"}
    assert manifest().files() == {"index.html"}


@pytest.mark.parametrize("inputs", [
    "frames/002-s2-image.png",
    [["image", "s1", "last", None, None, None]],
    [{"field": "image", "shot": "s1", "frame": "last", "at": None, "sha256": None}],
    [{"field": "image", "shot": "s1", "frame": "last", "at": None, "sha256": None,
      "file": None, "seconds": 3.0}],
])
def test_inputs_of_another_shape_make_the_manifest_unreadable(
        tmp_path: Path, inputs: object) -> None:
    """As any record this version does not know: the folder is remade from the lock."""
    data = json.loads(manifest_json(chained()))
    data["shots"][1]["inputs"] = inputs
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data, indent=2))
    assert read_manifest(path) is None
    assert manifest_storyboard(path) == "chain"  # its owner is still known, from its head


def test_a_record_with_a_key_this_version_does_not_know_is_not_read(tmp_path: Path) -> None:
    """What an older version of this tool does with `inputs`: it reads no records from the
    manifest (and remakes them), rather than misreading it."""
    data = json.loads(manifest_json(manifest(shots=1)))
    data["shots"][0]["from_the_future"] = 1
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    assert read_manifest(path) is None
