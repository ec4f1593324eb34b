"""The manifest's text and the cheap read of whose render a folder holds."""

from __future__ import annotations

import json
from pathlib import Path

from kling_pipeline.output.manifest import (
    Manifest,
    ManifestShot,
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
