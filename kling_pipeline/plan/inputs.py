"""Shots that take frames of other shots: their keys, once the frames are known.

A frame is an input image like a local file: its PNG's sha256 stands in the body and the
key. So a dependent shot's key is exact only once its upstream shot's video is rendered and
in the store; until then (a new or changed upstream, a fresh clone fetching videos by task id)
its key is provisional: made from the upstream's key and which frame, so it changes whenever
the upstream does, and it never equals an exact key. `plan` shows such a shot as new or
changed, rendered after its upstream; `apply` makes its key exact when the upstream is done
(run/executor.py asks `Inputs.resolve`), then decides again, as a plan would, what to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from kling_pipeline.frames import FrameError
from kling_pipeline.key import IMAGE_DIGEST_PREFIX, canonical_json, request_key
from kling_pipeline.state.cache import Store
from kling_pipeline.state.framestore import FrameStore
from kling_pipeline.state.lockfile import LockFile, Output
from kling_pipeline.storyboard.frameinput import PENDING
from kling_pipeline.storyboard.graph import upstream_first
from kling_pipeline.storyboard.images import ImageProblem
from kling_pipeline.storyboard.localimages import LocalImage
from kling_pipeline.storyboard.render import ShotRequest

if TYPE_CHECKING:
    from kling_pipeline.plan.jobs import Job
    from kling_pipeline.plan.pricing import PriceTable


@dataclass(frozen=True)
class Waiting:
    """Why a shot's key is not exact yet: the upstream shots whose frames are not known."""

    upstream: tuple[str, ...]
    blocked: str = ""  # set when it cannot be rendered at all: a frame the API would refuse


@dataclass
class Resolution:
    """The shots with their keys made exact where the frames are known."""

    shots: list[ShotRequest]
    waiting: dict[str, Waiting] = field(default_factory=dict)

    def by_id(self) -> dict[str, ShotRequest]:
        return {shot.id: shot for shot in self.shots}


def rendered_video(shot: ShotRequest, lock: LockFile, store: Store) -> Output | None:
    """The video of `shot`'s current request, when the store has it (its own lock entry's,
    or the store's for its key: another shot's, or another storyboard's)."""
    entry = lock.shots.get(shot.id)
    if entry is not None and entry.key == shot.key and entry.status == "done" \
            and entry.output is not None and store.has_object(entry.output):
        return entry.output
    cached = store.lookup(shot.key)
    return cached.output if cached is not None else None


class Inputs:
    """Makes dependent shots' keys exact from the videos of the shots they take frames of."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.frames = FrameStore(store.root)

    def resolve_all(self, shots: list[ShotRequest], lock: LockFile,
                    rendered_again: Collection[str] = ()) -> Resolution:
        """Every shot, in storyboard order; each dependent's key exact when every upstream
        video is rendered and in the store (frames extracted here, once per video).
        `rendered_again`: shots this run renders anew though up to date (`--force`): their
        videos, so their frames, will change."""
        if not any(shot.frames for shot in shots):
            return Resolution(shots)
        resolved: dict[str, ShotRequest] = {}
        waiting: dict[str, Waiting] = {}
        for shot in upstream_first(shots):
            if not shot.frames:
                resolved[shot.id] = shot
                continue
            # It waits for all its upstream shots as soon as it waits for one: the run gives
            # it every video it takes a frame of, rendered or not.
            blocked = next((f"needs {up!r}, which cannot be rendered" for up in shot.upstream
                            if up in waiting and waiting[up].blocked), "")
            videos = {up: None if up in waiting or up in rendered_again
                      else rendered_video(resolved[up], lock, self.store)
                      for up in shot.upstream}
            known = {up: video for up, video in videos.items() if video is not None}
            try:
                taken = self.exact(shot, known)
            except (FrameError, ImageProblem) as exc:
                resolved[shot.id] = provisional(shot, resolved)
                waiting[shot.id] = Waiting(shot.upstream, str(exc))
                continue
            if blocked or len(known) < len(videos):
                # the frames known stand in the body already: only the others show as changing
                resolved[shot.id] = provisional(taken, resolved)
                waiting[shot.id] = Waiting(shot.upstream, blocked)
            else:
                resolved[shot.id] = taken
        return Resolution([resolved[shot.id] for shot in shots], waiting)

    def exact(self, shot: ShotRequest, videos: Mapping[str, Output]) -> ShotRequest:
        """`shot` with the frames of `videos` (upstream id -> its video) taken: the body holds
        each one's digest, and the key is the request's own once every frame is there.
        FrameError or ImageProblem (the frame named) when a frame cannot be taken or would be
        refused by the API."""
        body = dict(shot.body)
        images: dict[str, LocalImage] = dict(shot.local_images)
        for frame in shot.frames:
            video = videos.get(frame.shot)
            if video is None:
                continue  # not rendered yet: its placeholder stays
            try:
                record = self.frames.get(self.store.object_path(video.sha256), video.sha256,
                                         frame)
            except ImageProblem as exc:
                raise ImageProblem(exc.reason, f"the {frame.label} of {frame.shot!r} "
                                               f"{exc.message}") from exc
            except FrameError as exc:
                raise FrameError(f"the {frame.label} of {frame.shot!r} cannot be taken: "
                                 f"{exc}") from exc
            images[frame.wire] = record.image(self.frames.png_path(record.sha256))
            body[frame.wire] = IMAGE_DIGEST_PREFIX + record.sha256
        return replace(shot, body=body, local_images=images,
                       key=request_key(shot.endpoint, body, shot.take))


def provisional(shot: ShotRequest, resolved: dict[str, ShotRequest]) -> ShotRequest:
    """`shot` keyed by its body as it is (frames known stand in it as digests, the others as
    placeholders) and its upstream shots' keys: a key that changes with them and never equals
    a key made from real frames."""
    material = {"provisional": request_key(shot.endpoint, shot.body, shot.take),
                "frames": [[frame.wire, resolved[frame.shot].key if frame.shot in resolved
                            else frame.shot, frame.token] for frame in shot.frames]}
    return replace(shot, key=PENDING + hashlib.sha256(canonical_json(material)).hexdigest())


class Resolver:
    """What a job that waited for frames does once its upstream shots are rendered: its key
    made exact from their videos, then decided as a plan decides (it may be up to date, a
    video to fetch by task id, or a request to pay for)."""

    def __init__(self, inputs: Inputs, storyboard: str, prices: PriceTable, *,
                 force: Collection[str] = (), retry_failed: bool = False,
                 resubmit_unknown: bool = False) -> None:
        self.inputs = inputs
        self.storyboard = storyboard
        self.prices = prices
        self.force = frozenset(force)
        self.retry_failed = retry_failed
        self.resubmit_unknown = resubmit_unknown

    def exact(self, job: Job, videos: Mapping[str, Output]) -> ShotRequest:
        """The job's shot with its frames taken from `videos` (upstream id -> video) and
        its key exact: FrameError or ImageProblem when a frame cannot be used. Slow (it may
        decode videos) and touches no lock: a worker thread may run it."""
        assert job.shot is not None
        return self.inputs.exact(job.shot, dict(videos))

    def job_for(self, job: Job, exact: ShotRequest, lock: LockFile) -> Job:
        """The job for `job`'s shots now that their key is exact: decided against `lock`
        as a plan decides (up to date, fetch by task id, reuse, or pay)."""
        from kling_pipeline.plan.jobs import make_jobs
        from kling_pipeline.plan.planner import Plan, decide

        by_key = lock.by_key()
        items = [decide(replace(exact, id=shot_id), lock.shots.get(shot_id), by_key,
                        self.prices, shot_id in self.force, self.retry_failed,
                        self.resubmit_unknown, self.inputs.store.lookup)
                 for shot_id in job.shot_ids]
        made, _ = make_jobs(Plan(self.storyboard, items), self.inputs.store)
        assert len(made) == 1, "shots with one request make one job"
        return made[0]
