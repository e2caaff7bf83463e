"""The JSON API served beside the Space on one FastAPI app: `POST /api/predict`, `GET /api/health`, `GET /metrics`;
and `AdmittedUploads`, which puts Gradio's own upload route under the same admission.

Bad input gets a 4xx with `{"error": "..."}` carrying the Classify tab's message.  Every prediction goes through the
admission the tab shares (serving/admission.py): past its queue a request is answered 503 with Retry-After at once,
before its body is read.  An admitted body streams into a temporary file (past 1 MB), is decoded to the ensemble's
small input as soon as it has arrived, and waits for a slot as pixels.  Decoding and predictions run in worker
threads, so the event loop Gradio's queue also runs on is never blocked.  OpenAPI docs at /docs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import tempfile
import time
from pathlib import Path
from contextlib import asynccontextmanager
from typing import AsyncIterator, BinaryIO

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from ..config import (ADMISSION_QUEUE, CLASSIFY_CONCURRENCY, DEFAULT_TOP_K, MAX_UPLOAD_BYTES, METRICS_TOKEN,
                      MIN_UPLOAD_BYTES_PER_S, UPLOAD_GRACE_S, WAITING_PER_CLIENT)
from ..evaluation.ensemble import Ensemble
from .admission import Admission, Busy
from .metrics import Metrics
from .predict import InputError, Prediction, check_upload_size, decode_upload, package_versions, predict_image

log = logging.getLogger("vision_ensemble.serving.api")

#: A request body may exceed the image by base64's 4/3 and the multipart/JSON framing, not more.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024
SPOOL_BYTES = 1024 * 1024  # a JSON body past this waits in a temporary file, as Starlette spools multipart files
#: HTTP has no code for it; nginx's "client closed request", for /metrics only (no one receives the answer).
CLIENT_CLOSED = 499


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong, in the words the Space's Classify tab uses")


class PredictJSON(BaseModel):
    image: str = Field(description="the image file's bytes, base64-encoded (PNG, JPEG, WebP, ...)")
    # Checked after parsing (not by `ge=1`) so a bad top_k gets its own message, as in the multipart form.
    top_k: int = Field(DEFAULT_TOP_K, description="how many classes to return", json_schema_extra={"minimum": 1})


class MemberInfo(BaseModel):
    source: str
    input_size: list[int] = Field(description="the member's (channels, height, width) input")
    test_top1: float | None = Field(None, description="its measured test top-1 (%), from the evaluation report beside "
                                                      "the manifest; null without one")


def measured_top1(report: dict | None, ensemble: Ensemble) -> tuple[list[float | None], float | None]:
    """The members' and the ensemble's test top-1 from the report evaluate.py wrote beside the manifest (its members
    in the manifest's order, named by the paths evaluate.py was given); None where the report does not say."""
    if report is None:
        return [None] * len(ensemble.members), None
    reported = {Path(m["source"]).name: m.get("top1") for m in report.get("members", [])}
    return ([reported.get(Path(m.source).name) for m in ensemble.members],
            report.get("ensemble", {}).get("top1"))


class QueueDepth(BaseModel):
    running: int = Field(description="predictions running now (the Classify tab's and the API's)")
    waiting: int = Field(description="requests taken on and not yet running: receiving, decoding or waiting for a slot")
    capacity: int = Field(description="requests taken on at once, running and waiting; past it POST /api/predict "
                                      "answers 503")


class Health(BaseModel):
    status: str = Field(description="'ok', or 'unavailable' when no ensemble is loaded (HTTP 503)")
    detail: str = Field(description="how the ensemble was loaded, or why it was not")
    runtime: str = Field(description="'onnx' (ONNX Runtime) or 'torch' (eager PyTorch)")
    model_version: str | None
    members: list[MemberInfo]
    test_top1: float | None = Field(None, description="the ensemble's measured test top-1 (%), from its report")
    class_names: list[str]
    queue: QueueDepth
    versions: dict[str, str | None] = Field(description="package versions: this project, timm, torch, gradio, ...")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


ERRORS = {status: {"model": ErrorResponse, "description": description} for status, description in (
    (400, "corrupt or empty image, too many pixels, bad base64 or JSON, bad top_k"),
    (408, f"the upload arrived too slowly: under {MIN_UPLOAD_BYTES_PER_S // 1024} kB/s on average after its first "
          f"{UPLOAD_GRACE_S:g} s"),
    (413, "the image (or the request body) is larger than the upload limit"),
    (415, "not an image file, or a body that is neither multipart/form-data nor JSON"),
    (503, "no ensemble is loaded, or the server is busy: its Retry-After header says in how many seconds to try "
          "again"))}

REQUEST_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "the image file"},
        "top_k": {"type": "integer", "minimum": 1, "default": DEFAULT_TOP_K}}}},
    "application/json": {"schema": PredictJSON.model_json_schema()}}}


def client_address(request) -> str:
    """The address a request (Starlette's or Gradio's) came from: uvicorn takes it from X-Forwarded-For when a
    trusted proxy sent it (config.FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client else ""


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def limited(request: Request, limit: int, grace_s: float = UPLOAD_GRACE_S,
            min_rate: float = MIN_UPLOAD_BYTES_PER_S) -> Request:
    """`request`, its body refused with 413 as soon as more than `limit` bytes have streamed in, and with 408 once it
    has taken longer than `grace_s` plus the time the bytes so far need at `min_rate` bytes/s."""
    received, start = 0, time.monotonic()

    async def receive():
        nonlocal received
        with anyio.move_on_after(start + grace_s + received / min_rate - time.monotonic()) as timer:
            message = await request.receive()
        if timer.cancelled_caught:
            raise ApiError(408, f"The upload arrived too slowly ({received:,} bytes in "
                                f"{time.monotonic() - start:.0f} s; at least {min_rate / 1024:g} kB/s are needed): "
                                "send it again on a faster connection.")
        received += len(message.get("body", b""))
        if received > limit:
            check_upload_size(MAX_UPLOAD_BYTES + 1)  # the upload limit's 413 message
        return message

    return Request(request.scope, receive)


@asynccontextmanager
async def received_upload(request: Request) -> AsyncIterator[tuple[str, BinaryIO, object]]:
    """The body, spooled (in memory up to 1 MB, then in a temporary file, closed when the block ends), as
    ("multipart", the image file, the form's top_k) or ("json", the JSON document, None); 413 as soon as it outgrows
    MAX_BODY_BYTES, 415 for another content type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        check_upload_size(MAX_UPLOAD_BYTES + 1)  # refused before anything is read
    body = limited(request, MAX_BODY_BYTES)
    if content_type == "multipart/form-data":
        try:
            form = await body.form(max_files=1, max_fields=1)
        except (MultiPartException, HTTPException) as exc:
            raise ApiError(400, f"Could not read the multipart form: {getattr(exc, 'detail', None) or exc}.") from None
        try:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "Send the image as the multipart file field 'image'.")
            yield "multipart", upload.file, form.get("top_k", DEFAULT_TOP_K)
        finally:
            await form.close()
    elif content_type == "application/json":
        spool = UploadFile(tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))
        try:
            async for chunk in body.stream():
                await spool.write(chunk)
            await spool.seek(0)
            yield "json", spool.file, None
        finally:
            await spool.close()
    else:
        raise ApiError(415, "Send the image as multipart/form-data (field 'image') or as JSON "
                            '{"image": "<base64>"}.')


def decode_request(kind: str, body: BinaryIO, top_k: object, num_classes: int,
                   size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """(the image's pixels decoded to `size`, top_k) from a received body (`received_upload`), or ApiError or
    InputError: run in a worker thread, a JSON body's base64 being decoded in memory."""
    if kind == "json":
        try:
            payload = PredictJSON.model_validate_json(body.read())
        except ValueError:
            raise ApiError(400, 'Send JSON {"image": "<base64 of the image file>", "top_k": 3}.') from None
        try:
            image = base64.b64decode(payload.image, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "The 'image' field is not valid base64.") from None
        top_k = payload.top_k
    else:
        image = body
    try:
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ApiError(400, "top_k must be a positive whole number.") from None
    if top_k > num_classes:
        raise ApiError(400, f"top_k must be at most {num_classes} (the number of classes).")
    return decode_upload(image, size), top_k


def create_api(ensemble: Ensemble | None, status: str, runtime: str, version: str | None,
               admission: Admission | None = None, metrics: Metrics | None = None,
               report: dict | None = None) -> FastAPI:
    """The FastAPI app (Gradio is mounted onto it by app.py); `admission` and `metrics` are shared with the Classify
    tab (by default the config's limits and fresh counts); `report` is the evaluation beside the manifest, whose
    accuracies /api/health gives."""
    api = FastAPI(title="Vision Ensemble API", version=package_versions()["vision-ensemble"] or "dev",
                  description="Top-k classes of an image from the calibrated ensemble of timm backbones the "
                              "Space serves, with each member's answer and an uncertainty flag.")
    admission = admission or Admission(CLASSIFY_CONCURRENCY, ADMISSION_QUEUE, WAITING_PER_CLIENT)
    metrics = metrics or Metrics(admission, ensemble)
    versions = package_versions()  # read once: the health check answers from memory, at once under any load
    member_top1, ensemble_top1 = measured_top1(report, ensemble) if ensemble is not None else ([], None)

    @api.get("/api/health", response_model=Health, responses={503: {"model": Health}})
    async def health():
        members = ensemble.members if ensemble is not None else []
        body = Health(status="ok" if members else "unavailable", detail=status, runtime=runtime,
                      model_version=version, class_names=ensemble.class_names if members else [],
                      members=[MemberInfo(source=m.source, input_size=list(m.data_config["input_size"]), test_top1=top1)
                               for m, top1 in zip(members, member_top1)],
                      test_top1=ensemble_top1,
                      queue=QueueDepth(running=admission.running, waiting=admission.waiting,
                                       capacity=admission.capacity),
                      versions=versions)
        return JSONResponse(body.model_dump(), status_code=200 if members else 503)

    @api.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request):
        if METRICS_TOKEN and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                                     f"Bearer {METRICS_TOKEN}".encode()):
            return error_response(401, "/metrics needs the header Authorization: Bearer <VISION_ENSEMBLE_METRICS_TOKEN>.",
                                  {"WWW-Authenticate": "Bearer"})
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def answer(request: Request) -> Prediction:
        if ensemble is None:
            raise ApiError(503, "No model weights are loaded; start the server with --manifest pointing at an "
                                "ensemble.json.")
        with admission.place(client_address(request)):
            async with received_upload(request) as (kind, body, top_k):
                arrived = time.perf_counter()
                pixels, top_k = await admission.decode(decode_request, kind, body, top_k,
                                                       len(ensemble.class_names), ensemble.source_size)
            prediction = await admission.run(predict_image, ensemble, pixels, top_k, version or "")
        metrics.observe_after_upload("api", time.perf_counter() - arrived)
        return prediction

    @api.post("/api/predict", response_model=Prediction, responses=ERRORS,
              openapi_extra={"requestBody": REQUEST_BODY})
    async def predict(request: Request):
        """Classify one image: multipart field `image`, or JSON `{"image": "<base64>", "top_k": 3}`."""
        start = time.perf_counter()
        try:
            response = JSONResponse((await answer(request)).model_dump())
        except Busy as exc:
            response = error_response(503, str(exc), {"Retry-After": str(exc.retry_after_s)})
        except (ApiError, InputError) as exc:
            response = error_response(exc.status, str(exc))
        except ClientDisconnect:  # gone before its upload arrived: no one to answer
            response = Response(status_code=CLIENT_CLOSED)
        except Exception:  # never a stack trace to the client; the server log keeps it
            log.exception("prediction failed")
            response = error_response(500, "The prediction failed on the server; the details are in its log.")
        metrics.observe("api", response.status_code, time.perf_counter() - start)
        return response

    return api


class AdmittedUploads:
    """ASGI middleware: Gradio's upload route (`POST /gradio_api/upload`, through which the Classify tab's image and
    the threshold tab's CSV arrive before their events are queued) under the rules of POST /api/predict.  An upload
    holds a place in `admission` while it arrives (past the queue, or past a client's share, it is answered 503
    with Retry-After before its body is read) and is answered 408 when it trickles in (`limited`); once it has
    arrived its place is free again, and the event it was for asks for one of its own.  The answers are plain text,
    as Gradio's own 413 is: the Space shows them in its error toast.  `metrics` counts them as route 'upload'."""

    def __init__(self, app, admission: Admission, metrics: Metrics, path: str = "/gradio_api/upload"):
        self.app, self.admission, self.metrics, self.path = app, admission, metrics, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        request = Request(scope, receive)
        body = limited(request, MAX_BODY_BYTES)
        refusal: Exception | None = None
        status = None  # of the answer the route sent

        async def send_tracked(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            with self.admission.place(client_address(request)), anyio.CancelScope() as upload:
                async def receive_limited():
                    nonlocal refusal
                    try:
                        return await body.receive()
                    except (ApiError, InputError) as exc:
                        # Gradio's route would make any exception a 500 with a traceback: stop it instead.
                        refusal = exc
                        upload.cancel()
                        await anyio.sleep_forever()

                await self.app(scope, receive_limited, send_tracked)
        except Busy as exc:
            refusal = exc
        if refusal is not None and status is None:
            status, headers = ((503, {"Retry-After": str(refusal.retry_after_s)}) if isinstance(refusal, Busy)
                               else (refusal.status, None))
            await PlainTextResponse(str(refusal), status, headers)(scope, receive, send)
        self.metrics.observe("upload", status or CLIENT_CLOSED, time.perf_counter() - start)
