"""The two routes of the real API: submit a task, read a task's result.

Checks run in the order a gateway and then the service would apply them: latency and network
faults first (nothing made), then auth, the endpoint, the rate limit, the body, the balance.
Only a request that passes all of them makes (and bills) a task.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from kling_pipeline.simulator.faults import drop_connection, retry_after_value
from kling_pipeline.simulator.renderer import clip_spec, data_uri_bytes
from kling_pipeline.simulator.state import RAW_SEND, Simulator, simulator_of
from kling_pipeline.simulator.tasks import (
    MODERATION_REASON,
    RANDOM_FAILURE_REASON,
    Task,
    body_hash,
    result_body,
    unknown_body,
    view,
)
from kling_pipeline.storyboard.endpoints import (
    Endpoint,
    Problem,
    effective_duration,
    get_endpoint,
    validate_body,
)
from kling_pipeline.storyboard.images import ImageProblem, check_image_bytes

SUBMIT_ROUTE = "POST /v3/async/{slug}"
RESULT_ROUTE = "GET /v3/async/task-result"
_GATEWAY_PAGE = "<html><head><title>{code} {text}</title></head><body><center><h1>{code} {text}" \
                "</h1></center><hr><center>nginx</center></body></html>"
_SERVER_ERRORS = {500: ("", "Internal Server Error"), 502: ("BAD_GATEWAY", "Bad Gateway"),
                  503: ("SERVICE_UNAVAILABLE", "Service Unavailable"),
                  504: ("GATEWAY_TIMEOUT", "Gateway Time-out")}
_BIG_IMAGE = 1 << 20  # data URIs larger than this are decoded off the event loop


async def _gate(request: Request, sim: Simulator, route: str, failed_500: str) -> Response | None:
    """Latency, dropped connections, 5xx and auth: the faults that come before any work."""
    config = sim.config
    sim.stats.requests[route] += 1
    if config.latency > 0:
        await asyncio.sleep(config.latency)
    if sim.dice.roll(config.drop_before_rate):
        sim.stats.faults["drop_before"] += 1
        # Read the body first: closing a socket with unread bytes makes the kernel send a reset
        # instead of a clean close, and the client would see either at random.
        await request.body()
        await drop_connection(request.scope[RAW_SEND])
        return Response()
    if sim.dice.roll(config.error_rate):
        code = sim.dice.choice(config.error_codes)
        reason, text = _SERVER_ERRORS[code]
        if code in (502, 504):  # the gateway answers, in its own words
            sim.stats.errors[reason] += 1
            return HTMLResponse(_GATEWAY_PAGE.format(code=code, text=text), status_code=code)
        return sim.error(code, reason or failed_500, f"{text} (simulated)")
    token = api_key_of(request.headers.get("authorization", ""))
    if token == "":
        return sim.error(config.missing_key_status, "MISSING_API_KEY",
                         "No API key: send the header 'Authorization: Bearer <key>'.")
    if token is None or (config.accepted_keys and token not in config.accepted_keys):
        return sim.error(403, "INVALID_API_KEY", "The API key is not valid.")
    return None


def api_key_of(header: str) -> str | None:
    """The key an Authorization header carries: "" when none, None for another scheme.

    `Bearer <key>` (any case, any spaces), or the bare key alone, as the provider's own JS SDK
    (npm novita-sdk) sends it: `Authorization: <key>`. Two words that do not start with
    Bearer (`Basic x`) are another scheme, which the API does not take.
    """
    words = header.split(None, 1)
    if not words:
        return ""
    if words[0].lower() == "bearer":
        return words[1].strip() if len(words) == 2 else ""
    return words[0] if len(words) == 1 else None


def _rate_limited(sim: Simulator, key: str, limit: int) -> Response | None:
    wait = sim.limiter.check(key, limit, sim.config.rate_window)
    if wait is None:
        return None
    headers = {"Retry-After": retry_after_value(wait)} if sim.config.retry_after else None
    return sim.error(429, "RATE_LIMIT_EXCEEDED",
                     f"Rate limit exceeded: at most {limit} requests per "
                     f"{sim.config.rate_window:g} s.", headers=headers)


def _is_unicode(body: dict[str, Any]) -> bool:
    """JSON may escape half a surrogate pair (`"\\ud800"`); such text has no UTF-8 form."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _wire_body(body: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """The body as the task sees it: `null` means "not given" (generated clients send every
    optional field), and `extra` (the V3 protocol's webhook envelope) is set aside."""
    problems: list[Problem] = []
    extra = body.get("extra")
    if extra is not None:
        webhook = extra.get("webhook") if isinstance(extra, dict) else None
        url = webhook.get("url") if isinstance(webhook, dict) else None
        if not isinstance(extra, dict):
            problems.append(Problem(("extra",), "must be an object such as "
                                                '{"webhook": {"url": "https://..."}}'))
        elif webhook is not None and not (isinstance(url, str)
                                          and url.startswith(("https://", "http://"))):
            problems.append(Problem(("extra", "webhook", "url"), "must be an http(s) URL"))
    return {k: v for k, v in body.items() if v is not None and k != "extra"}, problems


def _where(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "body"


async def _image_problems(endpoint: Endpoint, body: dict[str, Any]) -> list[Problem]:
    """Decode every data-URI image and apply the API's image limits."""
    problems: list[Problem] = []
    for spec in endpoint.fields:
        value = body.get(spec.wire)
        if spec.kind != "image" or not isinstance(value, str) or not value.startswith("data:"):
            continue
        try:
            if len(value) > _BIG_IMAGE:
                await asyncio.to_thread(_check_data_uri, value)
            else:
                _check_data_uri(value)
        except ImageProblem as problem:
            problems.append(Problem((spec.wire,), problem.message, problem.reason))
    return problems


def _check_data_uri(value: str) -> None:
    check_image_bytes(data_uri_bytes(value))


def _prompts(body: dict[str, Any]) -> list[str]:
    texts = [body["prompt"]] if isinstance(body.get("prompt"), str) else []
    parts = body.get("multi_prompt")
    if isinstance(parts, list):
        texts += [p["prompt"] for p in parts if isinstance(p, dict)
                  and isinstance(p.get("prompt"), str)]
    return texts


def _refusal(sim: Simulator, endpoint: Endpoint, body: dict[str, Any]) -> Response | None:
    """Refusals of a well-formed body: features, content markers, money."""
    config = sim.config
    for name in config.forbidden_fields:
        if body.get(name):
            return sim.error(403, "FEATURE_NOT_ALLOWED",
                             f"{name}: this feature is not allowed for your account.")
    if config.illegal_prompt_marker and any(config.illegal_prompt_marker in p
                                            for p in _prompts(body)):
        return sim.error(400, "ILLEGAL_PROMPT", "prompt: the prompt violates the usage policy.")
    for spec in endpoint.fields:
        value = body.get(spec.wire)
        if (spec.kind == "image" and isinstance(value, str) and config.illegal_image_marker
                and not value.startswith("data:") and config.illegal_image_marker in value):
            return sim.error(400, "ILLEGAL_IMAGE_CONTENT",
                             f"{spec.wire}: the image violates the usage policy.")
    if config.balance is not None and sim.accepted >= config.balance:
        return sim.error(400, "BILLING_BALANCE_NOT_ENOUGH",
                         "Your balance is not enough for this request.")
    return None


async def submit(request: Request) -> Response:
    """POST /v3/async/{slug}: check everything, make a task, answer its id."""
    sim = simulator_of(request)
    refused = await _gate(request, sim, SUBMIT_ROUTE, "CREATE_TASK_FAILED")
    if refused is not None:
        return refused
    config = sim.config
    slug = request.path_params["slug"]
    endpoint = get_endpoint(slug)
    if endpoint is None:
        return sim.error(404, "API_NOT_FOUND", f"No such API: {slug}.")
    if slug in config.forbidden_slugs:
        return sim.error(403, "API_NOT_ALLOWED", f"{slug} is not allowed for your account.")
    limited = _rate_limited(sim, "submit:" + slug, config.rpm_limit)
    if limited is not None:
        return limited
    try:
        body = json.loads(await request.body())
    except ValueError:
        return sim.error(400, "INVALID_REQUEST_BODY", "The body is not valid JSON.")
    if not isinstance(body, dict):
        return sim.error(400, "INVALID_REQUEST_BODY", "The body must be a JSON object.")
    if not _is_unicode(body):
        return sim.error(400, "INVALID_REQUEST_BODY",
                         "The body holds a \\u escape that is not Unicode text (a lone "
                         "surrogate).")
    body, problems = _wire_body(body)
    problems += validate_body(endpoint, body)
    problems += await _image_problems(endpoint, body)
    if problems:
        return sim.error(400, problems[0].reason,
                         "; ".join(f"{_where(p.path)}: {p.message}" for p in problems),
                         {"problems": [{"field": _where(p.path), "reason": p.reason,
                                        "message": p.message} for p in problems]})
    refused = _refusal(sim, endpoint, body)
    if refused is not None:
        return refused
    task = _new_task(sim, endpoint, body)
    sim.accepted += 1  # reserve before the await below, so the balance holds under load
    try:
        await sim.store.add(task)
    except BaseException:
        sim.accepted -= 1  # not stored, not answered: not billed
        raise
    sim.stats.submissions[task.body_hash] += 1
    sim.stats.submissions_by_slug[slug] += 1
    if config.prerender:
        sim.renderer.clip(render_key(sim, task), lambda: clip_spec(
            endpoint, task.body, config.video_fps, config.video_long_side))
    if sim.dice.roll(config.drop_after_rate):
        sim.stats.faults["drop_after"] += 1
        await drop_connection(request.scope[RAW_SEND])
        return Response()
    return JSONResponse({"task_id": task.task_id})


def _new_task(sim: Simulator, endpoint: Endpoint, body: dict[str, Any]) -> Task:
    config = sim.config
    digest = body_hash(body)
    seconds = effective_duration(endpoint, body)
    failure = ""
    if config.fail_marker and any(config.fail_marker in p for p in _prompts(body)):
        failure = MODERATION_REASON
    elif sim.dice.roll(config.failure_rate):
        failure = RANDOM_FAILURE_REASON
    no_url = not failure and sim.dice.roll(config.no_url_rate)
    return Task(task_id=str(uuid.uuid4()), slug=endpoint.slug,
                body=sim.store.intern(digest, body), body_hash=digest, video_seconds=seconds,
                submitted_at=time.time(), queue_seconds=config.queue_delay,
                generate_seconds=seconds * config.time_scale, failure=failure, no_url=no_url,
                seed=sim.dice.seed_value())


def render_key(sim: Simulator, task: Task) -> str:
    """Clips depend on the request and the picture knobs, never on the task."""
    return f"{task.slug}:{task.body_hash}:{sim.config.video_fps}:{sim.config.video_long_side}"


async def task_result(request: Request) -> Response:
    """GET /v3/async/task-result?task_id=: the task as of now, with a fresh video URL."""
    sim = simulator_of(request)
    refused = await _gate(request, sim, RESULT_ROUTE, "GET_RESULT_FAILED")
    if refused is not None:
        return refused
    config = sim.config
    limited = _rate_limited(sim, "task-result", config.result_rpm_limit)
    if limited is not None:
        return limited
    task_id = request.query_params.get("task_id", "").strip()
    if not task_id:
        return sim.error(400, "INVALID_REQUEST_BODY", "task_id: is required.")
    task = sim.store.get(task_id)
    if task is None:
        return sim.error(404, "TASK_NOT_FOUND", f"No task with id {task_id}.")
    if _answers_unknown(sim, task_id):
        return JSONResponse(unknown_body(task, config.int_fields))
    now = time.time()
    videos: list[dict[str, Any]] = []
    if view(task, now).status == "TASK_STATUS_SUCCEED" and not task.no_url:
        ttl = config.url_ttl
        signed_at = now
        if ttl and sim.dice.roll(config.expired_url_rate):  # as if the answer sat in a queue
            sim.stats.faults["expired_url"] += 1
            signed_at = now - ttl - 1
        videos.append({"video_url": sim.signer.url(str(request.base_url), task.task_id, ttl,
                                                   signed_at),
                       "video_url_ttl": ttl if config.int_fields else str(ttl),
                       "video_type": "mp4"})
    return JSONResponse(result_body(task, now, videos, config.int_fields,
                                    config.eta_rounding == "down"))


def _answers_unknown(sim: Simulator, task_id: str) -> bool:
    """Whether this poll answers TASK_STATUS_UNKNOWN: the first `unknown_polls` of each task,
    then a seeded `unknown_rate` of the others (counted in faults as unknown_status)."""
    if not sim.config.unknown_polls and not sim.config.unknown_rate:
        return False  # off (the default): nothing counted, no draw taken
    polls = sim.polls[task_id] = sim.polls.get(task_id, 0) + 1
    if polls <= sim.config.unknown_polls or sim.dice.roll(sim.config.unknown_rate):
        sim.stats.faults["unknown_status"] += 1
        return True
    return False
