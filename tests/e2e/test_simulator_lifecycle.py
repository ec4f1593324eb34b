"""The task lifecycle over real HTTP: queue, honest progress, real MP4s, failures, URLs."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import httpx
from support.simulator_fixtures import I2V, SimClient, png_bytes, png_uri, probe, t2v_body

from kling_pipeline.storyboard.images import data_uri

TERMINAL = ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED")


def video_url(answer: dict[str, object]) -> str:
    videos = answer["videos"]
    assert isinstance(videos, list) and len(videos) == 1, answer
    url: str = videos[0]["video_url"]
    return url


def test_queued_then_processing_with_honest_progress_then_succeed(sim: SimClient) -> None:
    sim.configure(queue_delay=0.25, time_scale=0.2)  # a 3 s clip: 0.25 s queued, 0.6 s making
    task_id = sim.submit(body=t2v_body("lifecycle", 3))
    seen = []
    while True:
        answer = sim.result(task_id)
        seen.append(answer["task"])
        if answer["task"]["status"] in TERMINAL:
            break
        time.sleep(0.03)
    statuses = [t["status"] for t in seen]
    assert statuses[0] == "TASK_STATUS_QUEUED"
    assert "TASK_STATUS_PROCESSING" in statuses
    assert statuses[-1] == "TASK_STATUS_SUCCEED"
    order = ["TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED"]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    progress = [t["progress_percent"] for t in seen]
    etas = [t["eta"] for t in seen]
    assert progress == sorted(progress) and etas == sorted(etas, reverse=True)
    assert len({p for t, p in zip(statuses, progress, strict=True)
                if t == "TASK_STATUS_PROCESSING"}) >= 3
    assert all(0 <= p <= 99 for t, p in zip(statuses, progress, strict=True) if t not in TERMINAL)
    assert seen[-1] == {"task_id": task_id, "task_type": "KLING_V3_0_PRO_T2V",
                        "status": "TASK_STATUS_SUCCEED", "reason": "", "eta": 0,
                        "progress_percent": 100}


def test_result_has_the_full_shape(sim: SimClient) -> None:
    answer = sim.wait(sim.submit())
    assert set(answer) == {"task", "extra", "videos", "images", "audios"}
    assert answer["images"] == [] and answer["audios"] == []
    info = answer["extra"]["debug_info"]
    stamps = [int(info[k]) for k in ("submit_time_ms", "execute_time_ms", "complete_time_ms")]
    assert all(isinstance(info[k], str) for k in info) and stamps == sorted(stamps)
    assert isinstance(answer["extra"]["seed"], str) and answer["extra"]["seed"].isdigit()
    (video,) = answer["videos"]
    assert video["video_url_ttl"] == "3600" and video["video_type"] == "mp4"
    assert video["video_url"].startswith(sim.base_url + "/")


def test_result_extra_has_what_the_python_sdk_models(sim: SimClient) -> None:
    """novita-client's V3TaskResponseExtra: seed, enable_nsfw_detection (bool) and debug_info
    with request_info (str) beside the three timings."""
    for int_fields in (False, True):
        sim.configure(int_fields=int_fields)
        extra = sim.wait(sim.submit())["extra"]
        assert extra["enable_nsfw_detection"] is False
        assert extra["debug_info"]["request_info"] == ""
        assert set(extra["debug_info"]) == {"submit_time_ms", "execute_time_ms",
                                            "complete_time_ms", "request_info"}


def test_unknown_status_for_the_first_polls_then_the_task_as_it_is(sim: SimClient) -> None:
    """novita-sdk's status enum has TASK_STATUS_UNKNOWN: a client must keep polling."""
    sim.configure(unknown_polls=2)
    task_id = sim.submit()
    time.sleep(0.4)  # long done by now
    for _ in range(2):
        answer = sim.result(task_id)
        assert answer["task"]["status"] == "TASK_STATUS_UNKNOWN"
        assert answer["task"]["task_id"] == task_id and answer["videos"] == []
        assert answer["task"]["eta"] == 0 and answer["task"]["progress_percent"] == 0
    answer = sim.result(task_id)
    assert answer["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert httpx.get(video_url(answer)).status_code == 200
    assert sim.stats()["faults"]["unknown_status"] == 2


def test_unknown_rate_is_partial_and_seeded(sim: SimClient) -> None:
    def statuses() -> list[str]:
        sim.configure(unknown_rate=0.5, seed=11)
        task_id = sim.submit()
        time.sleep(0.4)
        return [sim.result(task_id)["task"]["status"] for _ in range(30)]

    first = statuses()
    assert 0 < first.count("TASK_STATUS_UNKNOWN") < 30
    assert set(first) == {"TASK_STATUS_UNKNOWN", "TASK_STATUS_SUCCEED"}
    sim.http.post("/_simulator/reset")
    assert statuses() == first
    assert sim.http.post("/_simulator/config", json={"unknown_polls": -1}).status_code == 400


def test_int_fields_mode_sends_numbers(sim: SimClient) -> None:
    sim.configure(int_fields=True)
    answer = sim.wait(sim.submit())
    assert answer["videos"][0]["video_url_ttl"] == 3600
    assert isinstance(answer["extra"]["seed"], int)
    assert isinstance(answer["extra"]["debug_info"]["complete_time_ms"], int)


def test_download_is_a_real_mp4_of_the_requested_duration(sim: SimClient) -> None:
    answer = sim.wait(sim.submit(body=t2v_body("a title card", 3, aspect_ratio="16:9")))
    download = httpx.get(video_url(answer))  # no bearer header: presigned
    assert download.status_code == 200
    assert download.headers["content-type"] == "video/mp4"
    facts = probe(download.content)
    assert facts.codec == "h264" and facts.pix_fmt == "yuv420p"
    assert abs(facts.duration - 3.0) < 0.2
    # 320 px on the short side (video_long_side 0), so a frame can be fed back as an image
    assert (facts.width, facts.height) == (568, 320) and not facts.has_audio


def test_multi_prompt_lasts_the_sum_of_its_parts(sim: SimClient) -> None:
    body = {"multi_prompt": [{"prompt": "first", "duration": 2}, {"prompt": "then", "duration": 2}],
            "aspect_ratio": "9:16"}
    facts = probe(httpx.get(video_url(sim.wait(sim.submit(body=body)))).content)
    assert abs(facts.duration - 4.0) < 0.2
    assert (facts.width, facts.height) == (320, 568)


def test_image_to_video_follows_the_image_and_sound_adds_audio(sim: SimClient) -> None:
    body = {"image": data_uri(png_bytes(600, 300), "image/png"), "prompt": "p", "duration": 3,
            "sound": True, "end_image": png_uri(600, 300)}
    facts = probe(httpx.get(video_url(sim.wait(sim.submit(I2V, body)))).content)
    assert (facts.width, facts.height) == (640, 320)
    assert facts.has_audio and abs(facts.duration - 3.0) < 0.2


def test_v16_default_duration_is_five_seconds(sim: SimClient) -> None:
    answer = sim.wait(sim.submit("kling-v1.6-i2v", {"image_url": "https://example.com/a.png",
                                                    "prompt": "p"}))
    assert abs(probe(httpx.get(video_url(answer)).content).duration - 5.0) < 0.2


def test_fail_marker_fails_the_task_with_a_reason(sim: SimClient) -> None:
    answer = sim.wait(sim.submit(body=t2v_body("a scene SIMULATE_FAILURE please")))
    assert answer["task"]["status"] == "TASK_STATUS_FAILED"
    assert "moderation" in answer["task"]["reason"]
    assert answer["videos"] == []
    parts = {"multi_prompt": [{"prompt": "ok", "duration": 2},
                              {"prompt": "SIMULATE_FAILURE", "duration": 2}]}
    assert sim.wait(sim.submit(body=parts))["task"]["status"] == "TASK_STATUS_FAILED"


def test_random_failure_rate(sim: SimClient) -> None:
    sim.configure(failure_rate=1.0)
    answer = sim.wait(sim.submit())
    assert answer["task"]["status"] == "TASK_STATUS_FAILED" and answer["task"]["reason"]
    sim.configure(failure_rate=0.5, seed=3, prerender=False)
    ids = [sim.submit(body=t2v_body(f"r{i}")) for i in range(20)]
    ends = [sim.wait(task_id)["task"]["status"] for task_id in ids]
    assert 2 <= ends.count("TASK_STATUS_FAILED") <= 18
    assert sim.stats()["tasks"]["TASK_STATUS_FAILED"] == ends.count("TASK_STATUS_FAILED") + 1


def test_succeed_without_video_url(sim: SimClient) -> None:
    sim.configure(no_url_rate=1.0)
    answer = sim.wait(sim.submit())
    assert answer["task"]["status"] == "TASK_STATUS_SUCCEED" and answer["videos"] == []


def test_url_expires_with_403_and_task_result_gives_a_fresh_one(sim: SimClient) -> None:
    sim.configure(url_ttl=1)
    task_id = sim.submit()
    first = video_url(sim.wait(task_id))
    assert httpx.get(first).status_code == 200
    expires = int(parse_qs(urlsplit(first).query)["expires"][0])
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    refused = httpx.get(first)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/xml")
    assert "<Code>AccessDenied</Code>" in refused.text
    fresh = video_url(sim.result(task_id))
    assert fresh != first and httpx.get(fresh).status_code == 200
    assert sim.stats()["errors"]["AccessDenied"] == 1


def test_ttl_zero_mode_reports_zero_and_the_url_works(sim: SimClient) -> None:
    sim.configure(url_ttl=0)
    answer = sim.wait(sim.submit())
    assert answer["videos"][0]["video_url_ttl"] == "0"
    assert httpx.get(video_url(answer)).status_code == 200


def test_forged_or_unknown_urls_are_refused(sim: SimClient) -> None:
    url = video_url(sim.wait(sim.submit()))
    query = parse_qs(urlsplit(url).query)
    later = url.replace(f"expires={query['expires'][0]}",
                        f"expires={int(query['expires'][0]) + 999}")
    refused = httpx.get(later)
    assert refused.status_code == 403 and "SignatureDoesNotMatch" in refused.text
    missing = httpx.get(f"{sim.base_url}/_simulator/files/nope.mp4?expires=0&sig=x")
    assert missing.status_code == 404 and "NoSuchKey" in missing.text


def test_range_requests(sim: SimClient) -> None:
    url = video_url(sim.wait(sim.submit()))
    whole = httpx.get(url).content
    part = httpx.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == whole[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(whole)}"
    tail = httpx.get(url, headers={"Range": "bytes=-50"})
    assert tail.content == whole[-50:]
    assert httpx.get(url, headers={"Range": f"bytes={len(whole)}-"}).status_code == 416


def test_identical_requests_render_once(sim: SimClient) -> None:
    before = sim.stats()["renders"]
    body = t2v_body("rendered once, downloaded many times")
    ids = [sim.submit(body=body) for _ in range(20)]
    downloads = {httpx.get(video_url(sim.wait(task_id))).content for task_id in ids}
    assert len(downloads) == 1
    stats = sim.stats()
    assert stats["renders"] - before == 1
    assert list(stats["submissions"].values()) == [20]


def test_lazy_rendering_starts_at_download(sim: SimClient) -> None:
    sim.configure(prerender=False)
    before = sim.stats()["renders"]
    answer = sim.wait(sim.submit(body=t2v_body("lazy")))
    assert sim.stats()["renders"] == before
    assert httpx.get(video_url(answer)).status_code == 200
    assert sim.stats()["renders"] == before + 1


def test_expired_url_rate_hands_out_dead_urls_and_asking_again_can_help(sim: SimClient) -> None:
    sim.configure(expired_url_rate=1.0)
    task_id = sim.submit()
    dead = video_url(sim.wait(task_id))
    refused = httpx.get(dead)
    assert refused.status_code == 403 and "<Code>AccessDenied</Code>" in refused.text
    sim.configure(expired_url_rate=0.0)
    assert httpx.get(video_url(sim.result(task_id))).status_code == 200
    assert sim.stats()["faults"]["expired_url"] == 1


def test_eta_rounded_down_says_zero_during_the_last_second(sim: SimClient) -> None:
    """Some servers floor the eta: the client must not read 0 as "no eta" (issue 9, item 6)."""
    sim.configure(queue_delay=0, time_scale=1.0, eta_rounding="down")  # a 3 s clip takes 3 s
    task_id = sim.submit(body=t2v_body("eta rounded down", 3))
    first = sim.result(task_id)["task"]
    assert first["status"] == "TASK_STATUS_PROCESSING" and first["eta"] == 2
    time.sleep(2.3)
    late = sim.result(task_id)["task"]
    assert late["status"] == "TASK_STATUS_PROCESSING" and late["eta"] == 0
