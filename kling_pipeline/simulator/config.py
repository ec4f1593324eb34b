"""Every knob of the simulator, in one frozen dataclass.

Kept free of starlette/uvicorn imports so the command line can build its options from it
cheaply. Each field's metadata carries the help text used by `kling-pipeline simulator --help`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

TruncateMode = Literal["cut", "short"]
EtaRounding = Literal["up", "down"]
ERROR_CODES = (500, 502, 503, 504)


def _knob(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated API behaves; fast and fault-free by default."""

    # clock
    time_scale: float = _knob(0.04, "Generation seconds per second of video "
                                    "(0.04: a 5 s video takes 0.2 s; 12 is realistic).")
    queue_delay: float = _knob(0.05, "Seconds a task waits QUEUED before PROCESSING.")
    # auth and money
    accepted_keys: tuple[str, ...] = _knob((), "API keys accepted (none given: any non-empty key).")
    missing_key_status: int = _knob(401, "HTTP status for MISSING_API_KEY (docs say 400 or 401).")
    balance: int | None = _knob(None, "Accepted submissions before 400 "
                                      "BILLING_BALANCE_NOT_ENOUGH (unset: unlimited).")
    forbidden_slugs: tuple[str, ...] = _knob((), "Slugs answered 403 API_NOT_ALLOWED.")
    forbidden_fields: tuple[str, ...] = _knob((), "Body fields (e.g. sound) answered 403 "
                                                  "FEATURE_NOT_ALLOWED when set truthy.")
    # task outcomes
    fail_marker: str = _knob("SIMULATE_FAILURE", "A prompt containing this word ends FAILED "
                                                 "with a moderation-like reason.")
    illegal_prompt_marker: str = _knob("SIMULATE_ILLEGAL_PROMPT",
                                       "A prompt containing this word is refused at submit "
                                       "(400 ILLEGAL_PROMPT).")
    illegal_image_marker: str = _knob("SIMULATE_ILLEGAL_IMAGE",
                                      "An image URL containing this word is refused at submit "
                                      "(400 ILLEGAL_IMAGE_CONTENT).")
    failure_rate: float = _knob(0.0, "Fraction of tasks that end FAILED at random (seeded).")
    no_url_rate: float = _knob(0.0, "Fraction of tasks that SUCCEED with no video URL.")
    unknown_polls: int = _knob(0, "task-result answers TASK_STATUS_UNKNOWN to the first N polls "
                                  "of each task (the SDK's enum has it; a client keeps polling).")
    unknown_rate: float = _knob(0.0, "Fraction of other task-result answers that say "
                                     "TASK_STATUS_UNKNOWN (seeded).")
    eta_rounding: EtaRounding = _knob(  # noqa: RUF009 (a str default, immutable)
        "up", "How eta's whole seconds are rounded: up (never says 0 before the end) or down "
              "(says 0 during the last second, as some servers do).")
    # transport faults
    rpm_limit: int = _knob(0, "Submissions per rate window per endpoint before 429 "
                              "RATE_LIMIT_EXCEEDED (0: no limit).")
    result_rpm_limit: int = _knob(0, "task-result calls per rate window before 429 (0: no limit).")
    rate_window: float = _knob(60.0, "Seconds of the rate-limit window.")
    retry_after: bool = _knob(True, "Send Retry-After with 429 answers.")
    error_rate: float = _knob(0.0, "Fraction of API requests answered with a 5xx (no task made).")
    error_codes: tuple[int, ...] = _knob((500, 502, 503), "Which 5xx statuses error_rate uses.")
    drop_before_rate: float = _knob(0.0, "Fraction of API requests whose connection is dropped "
                                         "before anything happens (no task made).")
    drop_after_rate: float = _knob(0.0, "Fraction of submissions whose connection is dropped "
                                        "AFTER the task was made (billed, id never seen).")
    latency: float = _knob(0.0, "Seconds added to every API answer.")
    truncate_rate: float = _knob(0.0, "Fraction of downloads cut short.")
    truncate_mode: TruncateMode = _knob(  # noqa: RUF009 (a str default, immutable)
        "cut", "cut: connection closed mid-body; short: a complete-looking response of half "
               "the file.")
    # result URLs
    url_ttl: int = _knob(3600, "Seconds a video URL stays valid (0: reported ttl \"0\", "
                               "never expires).")
    expired_url_rate: float = _knob(0.0, "Fraction of result URLs handed out already expired "
                                         "(the client must ask task-result again).")
    int_fields: bool = _knob(False, "Send ttl, seed and timings as numbers, not strings.")
    # video
    video_fps: int = _knob(12, "Frames per second of rendered clips.")
    video_long_side: int = _knob(0, "Pixels on the long side of rendered clips (0: 320 on the "
                                    "short side, so every frame is a valid input image).")
    prerender: bool = _knob(True, "Start rendering at submit (else at first download).")
    render_workers: int = _knob(2, "Threads rendering clips.")
    render_cache_size: int = _knob(64, "Rendered clips kept in memory.")
    # persistence and randomness
    state_dir: str | None = _knob(None, "Folder keeping tasks so a restart still knows them.")
    seed: int = _knob(0, "Seed of every random decision.")

    def __post_init__(self) -> None:
        problems = check_config(self)
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def realistic(cls, **changes: Any) -> SimulatorConfig:
        """Timing close to the real service: a 5 s clip takes about a minute."""
        return cls(**{"time_scale": 12.0, "queue_delay": 10.0, **changes})

    def replace(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """A copy with `changes` (JSON values) applied; ValueError names bad knobs."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(unknown)}")
        fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                 for k, v in changes.items()}
        return dataclasses.replace(self, **fixed)

    def to_json(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


UNLIMITED_PACE = 1_000_000  # submissions per minute a client is told when there is no limit


def submit_pace(config: SimulatorConfig) -> int:
    """Submissions per minute a client may send to this simulator without a 429.

    `apply --simulate` paces by it instead of the real API's 20 per minute: with nothing billed
    there is nothing to protect, and 1,000 simulated shots took 50 minutes. Off by default.
    """
    if config.rpm_limit <= 0 or config.rate_window <= 0:
        return UNLIMITED_PACE
    if config.rate_window <= 60:  # rpm_limit in any minute keeps every shorter window under it
        return config.rpm_limit
    return max(1, config.rpm_limit * 60 // math.ceil(config.rate_window))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_config(config: SimulatorConfig) -> list[str]:
    """Every knob that is out of range, as readable messages."""
    problems: list[str] = []
    for name in ("failure_rate", "no_url_rate", "error_rate", "drop_before_rate",
                 "drop_after_rate", "truncate_rate", "expired_url_rate", "unknown_rate"):
        value = getattr(config, name)
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            problems.append(f"{name} must be a fraction 0..1, got {value!r}")
    for name in ("time_scale", "queue_delay", "latency", "rate_window"):
        value = getattr(config, name)
        if not _is_number(value) or value < 0:
            problems.append(f"{name} must be a number >= 0, got {value!r}")
    for name in ("rpm_limit", "result_rpm_limit", "url_ttl", "unknown_polls"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{name} must be a whole number >= 0, got {value!r}")
    for name in ("video_fps", "render_workers", "render_cache_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{name} must be a whole number >= 1, got {value!r}")
    side = config.video_long_side
    if not isinstance(side, int) or isinstance(side, bool) or (side != 0 and side < 16):
        problems.append(f"video_long_side must be 0 (auto) or a whole number >= 16, got {side!r}")
    if config.balance is not None and (not isinstance(config.balance, int) or config.balance < 0):
        problems.append(f"balance must be a whole number >= 0, got {config.balance!r}")
    if config.missing_key_status not in (400, 401):
        problems.append("missing_key_status must be 400 or 401")
    if not config.error_codes or any(c not in ERROR_CODES for c in config.error_codes):
        problems.append(f"error_codes must be some of {', '.join(map(str, ERROR_CODES))}")
    if config.truncate_mode not in ("cut", "short"):
        problems.append("truncate_mode must be cut or short")
    if config.eta_rounding not in ("up", "down"):
        problems.append("eta_rounding must be up or down")
    return problems
