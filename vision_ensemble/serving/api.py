"""The JSON API served beside the Space on one FastAPI app: `POST /api/predict` and `GET /api/health`.

Bad input gets a 4xx with `{"error": "..."}` carrying the Classify tab's message; predictions run in worker
threads (at most `CLASSIFY_CONCURRENCY` at once, shared with the tab) so the event loop Gradio's queue
also runs on is never blocked.  OpenAPI docs at /docs.
"""

from __future__ import annotations

import base64
import binascii
import logging

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from ..config import CLASSIFY_CONCURRENCY, DEFAULT_TOP_K, MAX_UPLOAD_BYTES
from ..evaluation.ensemble import Ensemble
from .predict import InputError, Prediction, check_upload_size, decode_upload, package_versions, predict_image

log = logging.getLogger("vision_ensemble.serving.api")

#: A request body may exceed the image by base64's 4/3 and the multipart/JSON framing, not more.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong, in the words the Space's Classify tab uses")


class PredictJSON(BaseModel):
    image: str = Field(description="the image file's bytes, base64-encoded (PNG, JPEG, WebP, ...)")
    # Checked after parsing (not by `ge=1`) so a bad top_k gets its own message, as in the multipart form.
    top_k: int = Field(DEFAULT_TOP_K, description="how many classes to return", json_schema_extra={"minimum": 1})


class MemberInfo(BaseModel):
    source: str
    input_size: list[int] = Field(description="the member's (channels, height, width) input")


class Health(BaseModel):
    status: str = Field(description="'ok', or 'unavailable' when no ensemble is loaded (HTTP 503)")
    detail: str = Field(description="how the ensemble was loaded, or why it was not")
    runtime: str = Field(description="'onnx' (ONNX Runtime) or 'torch' (eager PyTorch)")
    model_version: str | None
    members: list[MemberInfo]
    class_names: list[str]
    versions: dict[str, str | None] = Field(description="package versions: this project, timm, torch, gradio, ...")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


ERRORS = {status: {"model": ErrorResponse, "description": description} for status, description in (
    (400, "corrupt or empty image, too many pixels, bad base64 or JSON, bad top_k"),
    (413, "the image (or the request body) is larger than the upload limit"),
    (415, "not an image file, or a body that is neither multipart/form-data nor JSON"),
    (503, "no ensemble is loaded"))}

REQUEST_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "the image file"},
        "top_k": {"type": "integer", "minimum": 1, "default": DEFAULT_TOP_K}}}},
    "application/json": {"schema": PredictJSON.model_json_schema()}}}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as more than `limit` bytes have streamed in."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            check_upload_size(MAX_UPLOAD_BYTES + 1)  # the upload limit's 413 message
        chunks.append(chunk)
    return b"".join(chunks)


async def image_from_request(request: Request) -> tuple[bytes, int]:
    """(image bytes, top_k) from a multipart upload (field `image`) or a JSON body with base64 `image`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        check_upload_size(MAX_UPLOAD_BYTES + 1)  # refused before anything is read
    if content_type == "multipart/form-data":
        try:  # files past 1 MB are spooled to disk by Starlette, not held in memory
            form = await request.form(max_files=1, max_fields=1)
        except (MultiPartException, HTTPException) as exc:
            raise ApiError(400, f"Could not read the multipart form: {getattr(exc, 'detail', None) or exc}.") from None
        upload, top_k = form.get("image"), form.get("top_k", DEFAULT_TOP_K)
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "Send the image as the multipart file field 'image'.")
        check_upload_size(upload.size if upload.size is not None else 0)
        data = await upload.read()
    elif content_type == "application/json":
        body = await read_body(request, MAX_BODY_BYTES)
        try:
            payload = PredictJSON.model_validate_json(body)
        except ValueError:
            raise ApiError(400, 'Send JSON {"image": "<base64 of the image file>", "top_k": 3}.') from None
        try:
            data = base64.b64decode(payload.image, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "The 'image' field is not valid base64.") from None
        top_k = payload.top_k
    else:
        raise ApiError(415, "Send the image as multipart/form-data (field 'image') or as JSON "
                            '{"image": "<base64>"}.')
    try:
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ApiError(400, "top_k must be a positive whole number.") from None
    return data, top_k


def create_api(ensemble: Ensemble | None, status: str, runtime: str, version: str | None) -> FastAPI:
    """The FastAPI app (Gradio is mounted onto it by app.py)."""
    api = FastAPI(title="Vision Ensemble API", version=package_versions()["vision-ensemble"] or "dev",
                  description="Top-k classes of an image from the calibrated ensemble of timm backbones the "
                              "Space serves, with each member's answer and an uncertainty flag.")
    # At most this many API predictions hold a worker thread; INFERENCE_SLOTS caps them together with the tab.
    limiter = anyio.CapacityLimiter(CLASSIFY_CONCURRENCY)

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @api.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @api.get("/api/health", response_model=Health, responses={503: {"model": Health}})
    def health():
        members = ensemble.members if ensemble is not None else []
        body = Health(status="ok" if members else "unavailable", detail=status, runtime=runtime,
                      model_version=version, class_names=ensemble.class_names if members else [],
                      members=[MemberInfo(source=m.source, input_size=list(m.data_config["input_size"]))
                               for m in members],
                      versions=package_versions())
        return JSONResponse(body.model_dump(), status_code=200 if members else 503)

    @api.post("/api/predict", response_model=Prediction, responses=ERRORS,
              openapi_extra={"requestBody": REQUEST_BODY})
    async def predict(request: Request):
        """Classify one image: multipart field `image`, or JSON `{"image": "<base64>", "top_k": 3}`."""
        if ensemble is None:
            raise ApiError(503, "No model weights are loaded; start the server with --manifest pointing at an "
                                "ensemble.json.")
        data, top_k = await image_from_request(request)
        if top_k > len(ensemble.class_names):
            raise ApiError(400, f"top_k must be at most {len(ensemble.class_names)} (the number of classes).")

        def run() -> Prediction:
            return predict_image(ensemble, decode_upload(data, ensemble.source_size), top_k, version or "")

        try:
            return await anyio.to_thread.run_sync(run, limiter=limiter)
        except InputError:
            raise
        except Exception:  # never a stack trace to the client; the server log keeps it
            log.exception("prediction failed")
            raise ApiError(500, "The prediction failed on the server; the details are in its log.") from None

    return api

