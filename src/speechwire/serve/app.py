"""The HTTP API: OpenAI-compatible transcription and translation endpoints over one run folder.

    app = create_app(model, run_info, max_batch=16, max_wait_ms=10, max_upload_mb=25, api_key=None)

    POST /v1/audio/transcriptions   multipart: file, model, language, prompt, response_format, temperature, stream
    POST /v1/audio/translations     multipart: file, model, target_language, language, prompt, response_format,
                                    temperature, stream
    GET  /v1/models, /v1/models/{id}, /health
    GET  /                          the page: record or drop a file, watch the text stream in (static/index.html)

Each upload is decoded (any format and rate `load_audio` reads), cut at pauses when longer than
the encoder takes (`longform.split_recording`), and its pieces are queued on the Batcher, which
decodes pieces of concurrent requests together. With `stream=true` the answer is server-sent events
(serve/stream.py); errors found before the stream starts are the usual JSON errors. With `api_key`
every request but the page needs `Authorization: Bearer KEY` (serve/auth.py). Field meanings:
docs/serving.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from contextlib import asynccontextmanager
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from speechwire.audio import SAMPLE_RATE
from speechwire.llm import language_name
from speechwire.longform import Segment, encoder_limit_seconds, piece_audio
from speechwire.serve.auth import RequireApiKey
from speechwire.serve.batcher import Batcher, QueueFull
from speechwire.serve.errors import APIError, BodyLimit, UploadTooLarge, clip, install_error_handlers, shown
from speechwire.serve.formats import FORMATS, Result, render
from speechwire.serve.run import RunInfo
from speechwire.serve.stream import SettledText, StreamedRequest
from speechwire.serve.upload import decode_upload

log = logging.getLogger(__name__)

LANG_CODE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?")  # ISO 639 code, optional region
OPENAI_TASK = {"asr": "transcribe", "st": "translate"}
STREAM_FORMATS = ("json", "text")  # response formats that can stream (OpenAI's rule for its streaming models)
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def create_app(model, run: RunInfo, max_batch: int = 16, max_wait_ms: float = 10.0,
               max_upload_mb: float = 25.0, vad: str = "auto", max_queue: int = 1024,
               api_key: str | None = None, skip_silent: bool = False) -> FastAPI:
    """The FastAPI app serving `model`; its batcher starts and stops with the app (lifespan).

    Args:
        model: a speechwire.model.SpeechLLM in eval mode; only the batcher's thread runs it.
        run: what the run folder serves (serve.run.describe_run).
        max_batch, max_wait_ms, max_queue: dynamic batching (serve.batcher.Batcher).
        max_upload_mb: larger uploads get 413.
        vad: how long recordings are cut: auto | silero | energy (longform.split_recording).
        api_key: when set, every request but the page needs `Authorization: Bearer <api_key>`.
        skip_silent: a recording in which the VAD hears no speech answers empty text without being
            decoded (`speechwire serve` does this unless --decode-silence; longform.split_recording).
    """
    batcher = Batcher(model, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="speechwire", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.model, app.state.run, app.state.batcher, app.state.vad = model, run, batcher, vad
    app.state.skip_silent = skip_silent
    app.state.limit_seconds = encoder_limit_seconds(model)
    app.state.min_samples = int(getattr(model.encoder, "min_samples", 1))
    app.state.settled, app.state.streams = SettledText(model), set()
    max_bytes = int(max_upload_mb * 2**20)
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    if api_key is not None:
        app.add_middleware(RequireApiKey, key=api_key)  # added last: runs first, before any body is read
    install_error_handlers(app)
    page = resources.files(__package__).joinpath("static", "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await audio_endpoint(request, "asr")

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await audio_endpoint(request, "st")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card(run)]}

    @app.get("/v1/models/{model_id}")
    async def one_model(model_id: str) -> dict:
        if model_id != run.id:
            raise APIError(404, f"model {shown(model_id)} not found; this server serves {run.id!r}", "model",
                           "model_not_found")
        return model_card(run)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": run.id, "tasks": list(run.tasks), "tasks_from": run.tasks_from,
                "queued_pieces": batcher.waiting, "open_streams": len(app.state.streams), "max_batch": batcher.max_batch,
                "batch_sizes": {str(k): v for k, v in sorted(batcher.batch_sizes.items())}}

    return app


def model_card(run: RunInfo) -> dict:
    return {"id": run.id, "object": "model", "created": run.created, "owned_by": "speechwire",
            "tasks": list(run.tasks), "target_languages": list(run.tgt_langs)}


# --- the two audio endpoints ----------------------------------------------------------------------

def _field(form, name: str, default: str | None = None) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, UploadFile):
        return default
    return value.strip() or default


def _lang(form, name: str, default: str | None) -> str | None:
    code = _field(form, name, default)
    if code is not None and not LANG_CODE.fullmatch(code):
        raise APIError(400, f"{name}={shown(code)} is not a language code; use ISO 639-1, e.g. 'en' or 'de'", name)
    return code


def _check_fields(form, task: str, run: RunInfo) -> tuple[str, str, str | None, bool]:
    """(response_format, source language, target language, stream) from the form, or an APIError."""
    if task not in run.tasks:
        what = "translation" if task == "st" else "transcription"
        raise APIError(400, f"model {run.id!r} was trained for {', '.join(run.tasks) or 'no task'} only and does "
                            f"not do {what} (tasks from {run.tasks_from})", "model", "unsupported_task")
    fmt = _field(form, "response_format", "json")
    if fmt not in FORMATS:
        raise APIError(400, f"response_format={shown(fmt)} is not supported; use one of {', '.join(FORMATS)}",
                       "response_format", "invalid_response_format")
    temperature = _field(form, "temperature", "0")
    try:
        t = float(temperature)
    except ValueError:
        t = float("nan")
    if not 0.0 <= t <= 1.0:
        raise APIError(400, f"temperature={shown(temperature)} must be a number between 0 and 1 "
                            "(decoding is greedy; the value is accepted and not used)", "temperature")
    src = _lang(form, "language", "en")
    tgt = None
    if task == "st":
        default = run.tgt_langs[0] if len(run.tgt_langs) == 1 else None
        tgt = _lang(form, "target_language", default)
        if tgt is None:
            raise APIError(400, "target_language is required: the language code to translate into, e.g. 'de'"
                                + (f" (this run was trained for {', '.join(run.tgt_langs)})" if run.tgt_langs else ""),
                           "target_language", "missing_target_language")
        if run.tgt_langs and tgt not in run.tgt_langs:
            raise APIError(400, f"target_language={shown(tgt)}: model {run.id!r} was trained to translate into "
                                f"{', '.join(run.tgt_langs)} only", "target_language", "unsupported_language")
    return fmt, src, tgt, _stream(form, fmt)


def _stream(form, fmt: str) -> bool:
    value = _field(form, "stream", "false")
    if value.lower() not in BOOLEANS:
        raise APIError(400, f"stream={shown(value)} must be true or false", "stream")
    stream = BOOLEANS[value.lower()]
    if stream and fmt not in STREAM_FORMATS:
        raise APIError(400, f"response_format={fmt!r} cannot stream; with stream=true use json or text (the events "
                            "carry the text), or leave stream out for srt, vtt and verbose_json", "response_format",
                       "unsupported_value")
    return stream


async def audio_endpoint(request: Request, task: str) -> Response:
    """Shared body of /v1/audio/transcriptions (task "asr") and /v1/audio/translations ("st")."""
    state = request.app.state
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise APIError(400, "send the audio as multipart/form-data with a 'file' field (as the OpenAI client does)",
                       "file", "invalid_content_type")
    try:
        form = await request.form(max_files=4, max_fields=64)
    except UploadTooLarge as e:
        raise APIError(413, str(e), "file", "upload_too_large") from None
    except ClientDisconnect:
        log.info("client disconnected during the upload; request dropped")
        return Response(status_code=499)
    try:
        fmt, src, tgt, stream = _check_fields(form, task, state.run)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "no audio: the form needs a 'file' field holding the recording", "file", "missing_file")
        data = await upload.read()
        name = upload.filename or "upload"
    finally:
        await form.close()
    if not data:
        raise APIError(400, f"{clip(name)}: the uploaded file is empty (0 bytes)", "file", "empty_file")
    wav, pieces = await run_in_threadpool(decode_upload, data, name, state.limit_seconds, state.vad, state.skip_silent)
    audio = [piece_audio(wav, p, state.min_samples) for p in pieces]
    if stream:
        return _stream_response(state, audio, task, src, tgt, len(wav) / SAMPLE_RATE)
    texts = await _decode_pieces(state.batcher, audio, task, src, tgt)
    segments = [Segment(round(p.start_s, 3), round(p.end_s, 3), t) for p, t in zip(pieces, texts)]
    result = Result(OPENAI_TASK[task], language_name(tgt if task == "st" else src).lower(), len(wav) / SAMPLE_RATE, segments)
    body, media_type = render(fmt, result)
    return Response(content=body, media_type=media_type)


def _stream_response(state, pieces: list[np.ndarray], task: str, src: str, tgt: str | None,
                     seconds: float) -> StreamingResponse:
    """Queue the pieces now (a full queue is still a JSON 503), then answer their events as they come."""
    try:
        request = StreamedRequest(state.batcher, state.settled, pieces, task, src, tgt, math.ceil(seconds), state.streams)
    except QueueFull as e:
        raise APIError(503, f"server busy: {e}; retry shortly", None, "server_busy", "server_busy") from None
    return EventStream(request)


class EventStream(StreamingResponse):
    """The request's events as text/event-stream; however the response ends (done, client gone, even
    before its first byte), the request is closed: its pieces stop and it leaves /health's count."""

    def __init__(self, request: StreamedRequest) -> None:
        super().__init__(request.events(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.request = request

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.request.close()


async def _decode_pieces(batcher: Batcher, pieces: list[np.ndarray], task: str, src: str, tgt: str | None) -> list[str]:
    futures = []
    try:
        for x in pieces:
            futures.append(batcher.submit(x, task, src, tgt))
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
    except QueueFull as e:
        raise APIError(503, f"server busy: {e}; retry shortly", None, "server_busy", "server_busy") from None
    except ValueError as e:
        raise APIError(400, str(e).splitlines()[0], "file", "invalid_audio") from None
    finally:
        for f in futures:
            f.cancel()  # no-op for finished pieces; drops queued ones when the request is abandoned
