"""Under a crowd: the admission the JSON API and the Classify tab share (serving/admission.py), on a live app.py with
1 slot and a queue of 2, its /api/health queue depth and its /metrics.

Nothing is slowed down on the server: a request holds its place by being a slow upload (its headers and half its body
sent, the rest only when the test says), which is what a crowd on a slow network does to a real server.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import EXAMPLES, browser_page, needs_chromium, start_app
from vision_ensemble.serving.admission import Admission, Busy

CAT = EXAMPLES / "cifar10_cat.png"


@pytest.fixture(scope="module")
def server(ensemble_dir, tmp_path_factory):
    """(httpx client, url, port) of app.py with 1 slot and a queue of 2: 3 requests taken on at once, and one client
    address may hold 2 of them (every slot and one waiting place)."""
    log_file = tmp_path_factory.mktemp("log") / "app.log"
    process, url = start_app(ensemble_dir / "ensemble.json", log_file, VISION_ENSEMBLE_SLOTS="1",
                             VISION_ENSEMBLE_QUEUE="2", VISION_ENSEMBLE_UPLOAD_GRACE_S="300")  # uploads held at will
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http, url, int(url.rsplit(":", 1)[1].strip("/"))
    process.terminate()
    process.wait(timeout=30)
    assert "Traceback" not in log_file.read_text()


def predict_request(port: int, route: str = "/api/predict", field: str = "image") -> tuple[bytes, bytes]:
    """(request head, body) of a multipart POST of the cat to /api/predict (or to `route`, as its `field`)."""
    request = httpx.Request("POST", f"http://127.0.0.1:{port}{route}",
                            files={field: ("cat.png", CAT.read_bytes(), "image/png")})
    body = request.read()
    head = (f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: {request.headers['content-type']}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode(), body


class SlowUpload:
    """A POST /api/predict (or a `predict_request` of another route) from `source` (a loopback address: a client of
    its own) that sends its headers and half its body now and the rest on `finish`; until then the server holds its
    place, receiving."""

    def __init__(self, port: int, source: str, *route_and_field: str):
        head, body = predict_request(port, *route_and_field)
        self.rest = body[len(body) // 2:]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0))
        self.sock.sendall(head + body[:len(body) // 2])

    def finish(self) -> http.client.HTTPResponse:
        self.sock.sendall(self.rest)
        return read_response(self.sock)

    def close(self):
        self.sock.close()


def read_response(sock: socket.socket) -> http.client.HTTPResponse:
    """The answer on `sock`, read whole; closed even when it never comes, so the socket's close reaches the server
    (a failed test leaves no place held)."""
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        response.body = response.read()
    finally:
        response.close()
    return response


def refused_headers_only(port: int, source: str) -> tuple[http.client.HTTPResponse, float]:
    """(the answer, seconds to it) to a POST /api/predict of which only the headers were sent: an answer at all
    shows the server did not wait for the body."""
    head, _ = predict_request(port)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(head)
        response = read_response(sock)
    return response, time.perf_counter() - start


def wait_for_queue(http: httpx.Client, waiting: int, timeout: float = 30) -> dict:
    """/api/health's queue once `waiting` requests are taken on (the server has read the uploads' headers)."""
    deadline = time.monotonic() + timeout
    while (queue := http.get("/api/health").json()["queue"])["waiting"] != waiting:
        assert time.monotonic() < deadline, f"the queue never reached {waiting} waiting: {queue}"
        time.sleep(0.05)
    return queue


def held(port: int, sources: list[str]) -> list[SlowUpload]:
    return [SlowUpload(port, source) for source in sources]


def finish_all(uploads: list[SlowUpload]) -> list[http.client.HTTPResponse]:
    try:
        return [upload.finish() for upload in uploads]
    finally:
        for upload in uploads:
            upload.close()


def gradio_upload(http: httpx.Client, source: str = "127.0.0.9") -> httpx.Response:
    """The cat posted to Gradio's upload route (as the Space's image box does) from the loopback address `source`."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=http.base_url, transport=transport, timeout=30) as client:
        return client.post("/gradio_api/upload", files={"files": ("cat.png", CAT.read_bytes(), "image/png")})


def classify_event(http: httpx.Client, server_path: str) -> str:
    """The Classify tab's event for an image already uploaded, through Gradio's HTTP API: its event stream."""
    call = http.post("/gradio_api/call/classify",
                     json={"data": [{"path": server_path, "meta": {"_type": "gradio.FileData"}}]})
    assert call.status_code == 200, call.text
    return http.get(f"/gradio_api/call/classify/{call.json()['event_id']}").text


def test_past_the_queue_the_api_answers_503_at_once_and_the_admitted_complete(server):
    http, url, port = server
    uploaded = gradio_upload(http)  # before the crowd: the Space's upload route takes it on
    assert uploaded.status_code == 200, uploaded.text
    uploads = held(port, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    try:
        assert wait_for_queue(http, waiting=3) == {"running": 0, "waiting": 3, "capacity": 3}
        health = http.get("/api/health")
        assert health.status_code == 200 and health.elapsed.total_seconds() < 1  # at once while the queue is full
        response, seconds = refused_headers_only(port, "127.0.0.4")
        assert response.status == 503, response.body
        assert int(response.getheader("Retry-After")) >= 1
        assert b"busy" in response.body and b"Traceback" not in response.body
        assert seconds < 2, f"the refusal took {seconds:.2f} s"
        # The Space shares the queue: its upload route refuses an image with the same 503 (the page shows the text
        # in its error toast), and its Classify event says "busy", not a spinner or a stack trace.
        refused_upload = gradio_upload(http)
        assert refused_upload.status_code == 503 and "busy" in refused_upload.text, refused_upload.text
        assert int(refused_upload.headers["Retry-After"]) >= 1
        events = classify_event(http, uploaded.json()[0])
        assert "event: error" in events and "busy" in events and "Traceback" not in events, events
    finally:
        answers = finish_all(uploads)
    assert [a.status for a in answers] == [200, 200, 200], [a.body[:200] for a in answers]
    assert http.get("/api/health").json()["queue"] == {"running": 0, "waiting": 0, "capacity": 3}


@needs_chromium
def test_a_browser_uploading_to_a_full_server_is_told_it_is_busy(server):
    """In headless Chromium, an image dropped on the Classify tab while every place is taken: the page says "busy,
    try again" in its error toast (Gradio shows the upload route's 503 text), and the server serves it once there is
    room."""
    http, url, port = server
    with browser_page(url) as page:
        page.get_by_role("tab", name="Classify").click()
        uploads = held(port, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
        try:
            wait_for_queue(http, waiting=3)
            page.locator("input[type=file]").first.set_input_files(str(CAT))
            toast = page.get_by_text("The server is busy").first
            toast.wait_for(state="visible", timeout=20_000)
            assert "try again in a few seconds" in toast.inner_text()
        finally:
            answers = finish_all(uploads)
        assert [a.status for a in answers] == [200, 200, 200]
        page.locator("input[type=file]").first.set_input_files(str(CAT))
        page.get_by_role("button", name="Classify").click()
        page.get_by_text("members agree").first.wait_for(state="visible", timeout=30_000)


def test_a_client_may_not_hold_a_second_waiting_place(server):
    http, _, port = server
    uploads = held(port, ["127.0.0.1", "127.0.0.1"])  # the one slot's request and one waiting
    try:
        wait_for_queue(http, waiting=2)
        response, _ = refused_headers_only(port, "127.0.0.1")
        assert response.status == 503 and b"2 of your requests" in response.body, response.body
        uploads += held(port, ["127.0.0.2"])  # another client is taken on: the queue had room
        wait_for_queue(http, waiting=3)
    finally:
        answers = finish_all(uploads)
    assert [a.status for a in answers] == [200, 200, 200], [a.body[:200] for a in answers]


def test_an_upload_trickling_in_is_cut_off_and_gives_its_place_back(ensemble_dir, tmp_path):
    """With a grace of 2 s (the default is 10), an upload (to the API, then to the Space's upload route) that sent half
    its body and then stalls is answered 408 after about 2 s, no longer holds its place, and the server answers the
    next request.  (This server also has a /metrics token: only a request that carries it gets the metrics.)"""
    log_file = tmp_path / "app.log"
    process, url = start_app(ensemble_dir / "ensemble.json", log_file, VISION_ENSEMBLE_SLOTS="1",
                             VISION_ENSEMBLE_QUEUE="0", VISION_ENSEMBLE_UPLOAD_GRACE_S="2",
                             VISION_ENSEMBLE_METRICS_TOKEN="s3cret")
    try:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with httpx.Client(base_url=url, timeout=60) as http:
            start = time.perf_counter()
            stalled = SlowUpload(port, "127.0.0.1")  # never finished
            try:
                assert wait_for_queue(http, waiting=1)["capacity"] == 1  # it holds the one place
                answer = read_response(stalled.sock)
            finally:
                stalled.close()
            seconds = time.perf_counter() - start
            assert answer.status == 408 and b"too slowly" in answer.body, answer.body
            assert 2 <= seconds < 20, f"cut off after {seconds:.1f} s"
            assert http.get("/api/health").json()["queue"]["waiting"] == 0
            stalled = SlowUpload(port, "127.0.0.2", "/gradio_api/upload", "files")  # the Space's upload route
            try:
                answer = read_response(stalled.sock)
            finally:
                stalled.close()
            assert answer.status == 408 and b"too slowly" in answer.body, answer.body
            assert http.get("/api/health").json()["queue"]["waiting"] == 0
            assert http.post("/api/predict", files={"image": ("cat.png", CAT.read_bytes())}).status_code == 200
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                refused = http.get("/metrics", headers=headers)
                assert refused.status_code == 401 and "Bearer" in refused.json()["error"], refused.text
            metrics = http.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            assert metrics.status_code == 200
            assert 'route="api",status="408"' in metrics.text and 'route="upload",status="408"' in metrics.text
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in log_file.read_text()


def samples(http: httpx.Client) -> dict[tuple, float]:
    """Every sample of /metrics (parsed as Prometheus text), by (name, sorted labels)."""
    families = text_string_to_metric_families(http.get("/metrics").text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def test_metrics_parse_and_count_requests_latency_and_member_time(server):
    http, _, _ = server
    before = samples(http)
    assert http.post("/api/predict", files={"image": ("cat.png", CAT.read_bytes())}).status_code == 200
    assert http.post("/api/predict", content=b"hello", headers={"content-type": "text/plain"}).status_code == 415
    after = samples(http)

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    assert moved("vision_ensemble_requests_total", route="api", status="200") == 1
    assert moved("vision_ensemble_requests_total", route="api", status="415") == 1
    assert moved("vision_ensemble_request_seconds_count", route="api", status="200") == 1
    assert moved("vision_ensemble_request_seconds_sum", route="api", status="200") > 0
    # The part after the upload arrived: the answered request only, and no longer than the whole.
    assert moved("vision_ensemble_answer_after_upload_seconds_count", route="api") == 1
    assert 0 < moved("vision_ensemble_answer_after_upload_seconds_sum", route="api") <= moved(
        "vision_ensemble_request_seconds_sum", route="api", status="200")
    for member in ("member_a", "member_b"):
        assert moved("vision_ensemble_member_inference_seconds_count", member=member) == 1
    assert after[("vision_ensemble_queue_capacity", ())] == 3
    assert after[("vision_ensemble_queue_requests", (("state", "waiting"),))] == 0


def test_admission_counts_places_and_gives_them_back():
    """In-process: the counts /api/health reports, the two refusals, and places given back when a request fails."""
    release = threading.Event()

    async def hold(admission, client):
        with admission.place(client):
            await admission.run(release.wait)

    async def main():
        admission = Admission(slots=1, queue=1, waiting_per_client=0)
        async with anyio.create_task_group() as tasks:
            try:  # the held prediction ends even when a check fails: the task group waits for its thread
                tasks.start_soon(hold, admission, "a")
                await anyio.wait_all_tasks_blocked()
                assert (admission.running, admission.waiting) == (1, 0)
                with pytest.raises(Busy, match="1 of your requests"), admission.place("a"):
                    pass
                tasks.start_soon(hold, admission, "b")
                await anyio.wait_all_tasks_blocked()
                assert (admission.running, admission.waiting) == (1, 1)
                with pytest.raises(Busy, match="1 running, 1 waiting") as full, admission.place("c"):
                    pass
                assert full.value.retry_after_s >= 1
            finally:
                release.set()
        assert (admission.running, admission.waiting, admission.admitted) == (0, 0, 0)
        with pytest.raises(ZeroDivisionError), admission.place("a"):
            await admission.run(lambda: 1 / 0)
        assert admission.admitted == 0

    anyio.run(main)
