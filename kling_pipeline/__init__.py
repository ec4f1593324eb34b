"""kling-pipeline: a make-style pipeline for the Kling video-generation API.

The names below are the Python API (docs/python-api.md); every other module is private and
may change. They are imported on first use, so `import kling_pipeline` (and the command
line's `--help`) stays instant.

    from kling_pipeline import Project

    project = Project.open("film.yaml", simulate=True)
    print(project.plan().has_work)
    report = project.apply()
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the private module it lives in
_EXPORTS = {
    "Project": "project", "Validation": "project",
    "Plan": "plan.planner", "PlanItem": "plan.planner", "FieldChange": "plan.planner",
    "ApplyReport": "results", "RunReport": "results", "ShotResult": "results",
    "Outcome": "results", "SUCCESSFUL": "results",
    "ShotRequest": "storyboard.render", "ShotStatus": "views.status",
    "Manifest": "output.manifest", "ManifestShot": "output.manifest",
    "ManifestFinal": "output.manifest",
    "FolderResult": "output.folder",
    "Event": "events", "RunStarted": "events", "ShotUpdate": "events", "Note": "events",
    "RunEnded": "events", "FolderStep": "events", "CancelToken": "events",
    "KlingPipelineError": "errors", "StoryboardError": "errors", "Diagnostic": "errors",
    "LockFileError": "errors", "UsageError": "errors", "NoApiKey": "errors",
    "Declined": "errors", "RunLockBusy": "state.lockstore", "RemoteError": "errors",
    "PushReport": "remote.transfer", "PullReport": "remote.transfer",
    "RemoteGcReport": "remote.gc", "RemoteUse": "results",
}
__all__ = [
    "SUCCESSFUL",
    "ApplyReport",
    "CancelToken",
    "Declined",
    "Diagnostic",
    "Event",
    "FieldChange",
    "FolderResult",
    "FolderStep",
    "KlingPipelineError",
    "LockFileError",
    "Manifest",
    "ManifestFinal",
    "ManifestShot",
    "NoApiKey",
    "Note",
    "Outcome",
    "Plan",
    "PlanItem",
    "Project",
    "PullReport",
    "PushReport",
    "RemoteError",
    "RemoteGcReport",
    "RemoteUse",
    "RunEnded",
    "RunLockBusy",
    "RunReport",
    "RunStarted",
    "ShotRequest",
    "ShotResult",
    "ShotStatus",
    "ShotUpdate",
    "StoryboardError",
    "UsageError",
    "Validation",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kling_pipeline' has no attribute {name!r}")
    value = getattr(import_module(f"kling_pipeline.{module}"), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from kling_pipeline.errors import (
        Declined,
        Diagnostic,
        KlingPipelineError,
        LockFileError,
        NoApiKey,
        RemoteError,
        StoryboardError,
        UsageError,
    )
    from kling_pipeline.events import (
        CancelToken,
        Event,
        FolderStep,
        Note,
        RunEnded,
        RunStarted,
        ShotUpdate,
    )
    from kling_pipeline.output.folder import FolderResult
    from kling_pipeline.output.manifest import Manifest, ManifestFinal, ManifestShot
    from kling_pipeline.plan.planner import FieldChange, Plan, PlanItem
    from kling_pipeline.project import Project, Validation
    from kling_pipeline.remote.gc import RemoteGcReport
    from kling_pipeline.remote.transfer import PullReport, PushReport
    from kling_pipeline.results import (
        SUCCESSFUL,
        ApplyReport,
        Outcome,
        RunReport,
        ShotResult,
    )
    from kling_pipeline.state.lockstore import RunLockBusy
    from kling_pipeline.storyboard.render import ShotRequest
    from kling_pipeline.views.status import ShotStatus
