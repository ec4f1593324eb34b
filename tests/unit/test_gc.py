from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kling_pipeline.errors import KlingPipelineError
from kling_pipeline.state.cache import CachedResult, Store
from kling_pipeline.state.gc import (
    Garbage,
    GcReport,
    delete_garbage,
    find_garbage,
    project_lock_files,
    render_gc_text,
)
from kling_pipeline.state.lockfile import LockEntry, LockFile, Output, Status, read_lock, write_lock
from kling_pipeline.state.lockstore import LockKeeper
from kling_pipeline.storyboard.load import default_cache_dir, lock_path_for
from kling_pipeline.target import SIMULATED


def put(store: Store, name: str, size: int, key: str | None = None,
        task_id: str | None = None) -> Output:
    """A downloaded video, the way the executor stores one: temp file, ingest, record."""
    data = (name.encode() + b"-") * (size // (len(name) + 1)) + b"." * (size % (len(name) + 1))
    temp = store.temp_file()
    temp.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    store.ingest(temp, sha)
    output = Output(sha, len(data), 5.0)
    if key is not None:
        store.record(key, CachedResult(output, task_id, "kling-v3.0-pro-t2v"))
    return output


def entry(key: str, status: Status = "done", output: Output | None = None,
          task_id: str | None = "t") -> LockEntry:
    return LockEntry(key=key, key_scheme=1, endpoint="kling-v3.0-pro-t2v",
                     request={"prompt": key}, status=status, task_id=task_id, output=output)


def lock(path: Path, **shots: LockEntry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lock(path, LockFile(path.name.split(".")[0], dict(shots)))
    return path


@dataclass
class Project:
    root: Path
    cache: Path
    outputs: dict[str, Output]  # by name: a/b/c/e/s1 referenced, d/g1/g2/g3/s2 not
    locks: list[Path]  # the ones that count

    def path(self, name: str) -> Path:
        store = self.cache / SIMULATED if name.startswith("s") else self.cache
        return Store(store).object_path(self.outputs[name].sha256)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "film"
    root.mkdir()
    storyboard = root / "film.yaml"
    storyboard.write_text("version: 1\nname: film\nshots: []\n")
    # the layout of target.target_for: `.kling-cache/` and `.kling-cache/simulated/`
    real = Store(default_cache_dir(storyboard))
    sim = Store(default_cache_dir(storyboard) / SIMULATED)
    out = {
        "a": put(real, "a", 3000, "key-a", "task-a"),
        "b": put(real, "b", 1500, "key-b", "task-b"),
        "c": put(real, "c", 700, "key-c", "task-c"),
        "d": put(real, "d", 2048, "key-d", "task-d"),
        "e": put(real, "e", 900, "key-e", "task-e"),
        "g1": put(real, "g1", 4000),
        "g2": put(real, "g2", 5000, "key-g2", None),
        "g3": put(real, "g3", 6000, "key-g3", "task-g3"),
        "s1": put(sim, "s1", 1200, "key-s1", "sim-1"),
        "s2": put(sim, "s2", 1300, "key-s2", "sim-2"),
    }
    real.record("key-d-again", CachedResult(out["d"], "task-d2", "kling-v3.0-pro-t2v"))
    real.close()
    sim.close()
    locks = [
        lock(lock_path_for(storyboard),
             establishing=entry("key-a", output=out["a"], task_id="task-a"),
             # a failed re-roll that kept its earlier output still references it
             wave=entry("key-b", "failed", out["b"], "task-b"),
             # in flight: downloaded and indexed, the lock not written yet
             keeper=entry("key-e", "rendered", None, "task-e")),
        lock(root / f"film.{SIMULATED}.lock.json", establishing=entry("key-s1", output=out["s1"])),
        lock(root / "teaser" / "teaser.lock.json", one=entry("key-c", output=out["c"])),
    ]
    # locks that do not count: outputs, git's folder, a virtualenv, node_modules
    lock(root / "renders" / "film" / "copy.lock.json", x=entry("key-g1", output=out["g1"]))
    lock(root / ".git" / "old.lock.json", x=entry("key-g2", output=out["g2"]))
    (root / "venv").mkdir()
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    lock(root / "venv" / "lib" / "x.lock.json", x=entry("key-g3", output=out["g3"]))
    lock(root / "node_modules" / "pkg" / "x.lock.json", x=entry("key-g3", output=out["g3"]))
    # other things in the cache folder
    (real.root / "templates.json").write_text("{}")
    (sim.root / "simulator").mkdir()
    (sim.root / "simulator" / "clip.mp4").write_bytes(b"simulator state")
    return Project(root, real.root, out, sorted(locks))


def snapshot(folder: Path) -> dict[Path, bytes]:
    """Every file's bytes, except SQLite's own -wal/-shm files beside the index."""
    return {p: p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_simulated_folder_name_is_apply_s() -> None:
    from kling_pipeline.state import gc

    assert gc.SIMULATED == SIMULATED


def test_project_lock_files_skip_hidden_renders_node_modules_and_virtualenvs(
        project: Project) -> None:
    assert project_lock_files(project.root) == project.locks
    assert [p.relative_to(project.root).as_posix() for p in project.locks] == [
        "film.lock.json", "film.simulated.lock.json", "teaser/teaser.lock.json"]


def test_lists_exactly_the_unreferenced_objects_with_sizes(project: Project) -> None:
    report = find_garbage(project.cache, project.root)
    out = project.outputs
    assert report.stores == (project.cache, project.cache / SIMULATED)
    assert report.locks == tuple(project.locks)
    assert {g.sha256: g.size for g in report.garbage} == {
        out[n].sha256: out[n].size for n in ("d", "g1", "g2", "g3", "s2")}
    assert [g.path for g in report.garbage] == sorted(g.path for g in report.garbage)
    assert all(g.path == project.path(n) for n in ("d", "g1", "g2", "g3", "s2")
               for g in report.garbage if g.sha256 == out[n].sha256)
    by_sha = {g.sha256: g for g in report.garbage}
    assert by_sha[out["d"].sha256].task_ids == ("task-d", "task-d2")
    assert by_sha[out["d"].sha256].keys == ("key-d", "key-d-again")
    assert by_sha[out["g1"].sha256].task_ids == () and by_sha[out["g1"].sha256].keys == ()
    assert by_sha[out["g2"].sha256].task_ids == () and by_sha[out["g2"].sha256].keys == (
        "key-g2",)
    assert by_sha[out["s2"].sha256].task_ids == ("sim-2",)
    kept = ("a", "b", "c", "e", "s1")
    assert (report.kept, report.kept_bytes) == (5, sum(out[n].size for n in kept))
    assert report.total_bytes == 2048 + 4000 + 5000 + 6000 + 1300
    assert report.ignored == () and report.partial_downloads == 0


def test_finding_changes_nothing(project: Project) -> None:
    before = snapshot(project.root)
    report = find_garbage(project.cache, project.root)
    render_gc_text(report)
    assert snapshot(project.root) == before


def test_delete_keeps_every_referenced_object_byte_for_byte(project: Project) -> None:
    kept = ("a", "b", "c", "e", "s1")
    before = {n: project.path(n).read_bytes() for n in kept}
    others = {p: b for p, b in snapshot(project.root).items() if "objects" not in p.parts
              and "index" not in p.parts}
    report = find_garbage(project.cache, project.root)

    assert delete_garbage(report) == report.total_bytes

    for name in kept:
        assert project.path(name).read_bytes() == before[name]
        assert hashlib.sha256(before[name]).hexdigest() == project.outputs[name].sha256
    for item in report.garbage:
        assert not item.path.exists()
        assert not item.path.parent.exists() or any(item.path.parent.iterdir())
    assert {p: b for p, b in snapshot(project.root).items() if "objects" not in p.parts
            and "index" not in p.parts} == others  # locks, memo, simulator state
    real, sim = Store(project.cache), Store(project.cache / SIMULATED)
    try:
        for key in ("key-d", "key-d-again", "key-g2", "key-g3"):
            assert real.lookup(key) is None
        assert sim.lookup("key-s2") is None
        for key, name in (("key-a", "a"), ("key-b", "b"), ("key-c", "c"), ("key-e", "e")):
            found = real.lookup(key)
            assert found is not None and found.output == project.outputs[name]
        found = sim.lookup("key-s1")
        assert found is not None and found.output == project.outputs["s1"]
    finally:
        real.close()
        sim.close()
    again = find_garbage(project.cache, project.root)
    assert again.garbage == () and again.kept == 5
    assert "nothing to collect" in render_gc_text(again)


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"lock_version": 1, "shots": {\n<<<<<<< HEAD\n}}', "teaser.lock.json:2:1: the lock "
                                                          "file is not valid JSON"),
    (b'{"lock_version": 1, "shots": {"\xc3(": {}}}', "not UTF-8 text"),
    (b'{"lock_version": 2, "shots": {}}', "lock_version is 2"),
])
def test_a_broken_lock_stops_everything(project: Project, content: bytes,
                                        expected: str) -> None:
    good = find_garbage(project.cache, project.root)
    teaser = project.root / "teaser" / "teaser.lock.json"
    teaser.write_bytes(content)
    before = snapshot(project.root)

    with pytest.raises(KlingPipelineError) as found:
        find_garbage(project.cache, project.root)
    with pytest.raises(KlingPipelineError) as deleting:
        delete_garbage(good)  # broken after the listing: still nothing is deleted

    for caught in (found, deleting):
        assert str(teaser) in str(caught.value) and expected in str(caught.value)
        assert "gc deletes nothing" in str(caught.value)
    assert snapshot(project.root) == before


def test_a_lock_written_after_the_listing_saves_its_object(project: Project) -> None:
    report = find_garbage(project.cache, project.root)
    out = project.outputs
    # a run finishes meanwhile and records "d"; a new storyboard's first run reuses "g1"
    path = project.root / "film.lock.json"
    keeper = LockKeeper(path, read_lock(path, "film"))
    keeper.put({"extra": entry("key-d", output=out["d"], task_id="task-d")})
    lock(project.root / "other" / "other.lock.json", x=entry("key-g1", output=out["g1"]))

    freed = delete_garbage(report)

    assert project.path("d").exists() and project.path("g1").exists()
    assert freed == sum(out[n].size for n in ("g2", "g3", "s2"))
    store = Store(project.cache)
    try:
        assert store.lookup("key-d") is not None  # its index entries stay too
    finally:
        store.close()
    assert not any(project.path(n).exists() for n in ("g2", "g3", "s2"))


def test_an_in_flight_task_keeps_its_video_and_a_simulated_lock_keeps_real_objects(
        project: Project) -> None:
    # "e": downloaded and indexed for task-e, whose lock entry has no output yet
    report = find_garbage(project.cache, project.root)
    assert project.outputs["e"].sha256 not in {g.sha256 for g in report.garbage}
    # `x.simulated.lock.json` is also the real lock of a storyboard named x.simulated.yaml
    lock(project.root / "film.simulated.lock.json",
         establishing=entry("key-s1", output=project.outputs["s1"]),
         g3=entry("key-g3", output=project.outputs["g3"]))
    report = find_garbage(project.cache, project.root)
    assert project.outputs["g3"].sha256 not in {g.sha256 for g in report.garbage}


def test_files_that_are_not_objects_are_left_alone(project: Project) -> None:
    objects = project.cache / "objects"
    sha = "f" * 64
    strays = [objects / "notes.txt", objects / "ab" / "notes.txt",
              objects / "00" / f"{sha}.mp4",  # not in its own folder
              objects / sha[:2] / f"{sha.upper()}.mp4", objects / sha[:2] / f"{sha}.mp4.part"]
    for stray in strays:
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"not ours")
    (project.cache / "tmp" / "download-x.part").write_bytes(b"half")

    report = find_garbage(project.cache, project.root)
    delete_garbage(report)

    assert report.ignored == tuple(sorted(strays))
    assert report.partial_downloads == 1
    assert all(stray.read_bytes() == b"not ours" for stray in strays)
    assert (project.cache / "tmp" / "download-x.part").exists()
    text = render_gc_text(report)
    assert "left alone: 5 other files under objects/, e.g. " in text
    assert "1 partial download in tmp/" in text


def test_delete_refuses_a_path_that_is_not_a_store_object(project: Project) -> None:
    report = find_garbage(project.cache, project.root)
    storyboard = project.root / "film.yaml"
    bad = replace(report, garbage=(Garbage("a" * 64, storyboard, 10, (), ()),))
    with pytest.raises(ValueError, match="not an object"):
        delete_garbage(bad)
    assert storyboard.exists()


def test_a_missing_cache_dir_gives_an_empty_report_and_creates_nothing(tmp_path: Path) -> None:
    lock(tmp_path / "film.lock.json", a=entry("key-a", output=Output("a" * 64, 10, 5.0)))
    before = sorted(tmp_path.rglob("*"))
    report = find_garbage(tmp_path / ".kling-cache", tmp_path)
    assert report == GcReport((), (tmp_path / "film.lock.json",), 0, 0, (), tmp_path)
    assert delete_garbage(report) == 0
    assert sorted(tmp_path.rglob("*")) == before
    assert render_gc_text(report) == (
        "nothing to collect: kept 0 objects (0 B) referenced by 1 lock file\n")


def test_render_lists_sizes_task_ids_and_the_force_hint(project: Project) -> None:
    report = find_garbage(project.cache, project.root)
    text = render_gc_text(report)
    lines = text.splitlines()
    out = project.outputs
    d_line = next(line for line in lines if out["d"].sha256[:12] in line)
    assert d_line.startswith(f"- {out['d'].sha256[:12]} ")
    assert "2.0 KiB" in d_line and "task task-d, task-d2" in d_line
    assert "no task id recorded" in next(line for line in lines if out["g1"].sha256[:12] in line)
    assert next(line for line in lines if out["s2"].sha256[:12] in line).endswith("(simulated)")
    assert len([line for line in lines if line.startswith("- ")]) == 5
    assert out["d"].sha256[:13] not in text  # short digests only
    assert lines[-2] == ("5 unreferenced objects (17.9 KiB) to delete; "
                         "kept 5 objects (7.1 KiB) referenced by 3 lock files")
    assert lines[-1] == "run again with --force to delete them"
    done = render_gc_text(report, freed=report.total_bytes)
    assert "--force" not in done and "some were kept" not in done
    assert "deleted: 17.9 KiB freed of 5 unreferenced objects (17.9 KiB)" in done
    partly = render_gc_text(report, freed=2048)
    assert "deleted: 2.0 KiB freed of" in partly and "some were kept" in partly
