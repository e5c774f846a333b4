"""The HTTP API of `bigmodel serve` (FastAPI):

    GET  /health        {"status": "ok", "task": ...}
    GET  /v1/model      task, classes, parameter count, the checkpoint's config and best metric
    GET  /v1/stats      requests served, model calls and how many inputs each call batched
    POST /v1/predict    classifiers: {"texts": [...]} or {"images": [base64 PNG/JPEG, ...]}, or a
                        multipart upload of image files -> {"predictions": [{"label", "probabilities"}]}
    POST /v1/generate   GPT: {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
                        "stream"} -> {"text", "seed"}, or with "stream": true server-sent events

Every refused request is answered with a 4xx and {"error": "<one line>"}; the server goes on serving.
All model work runs in one thread (the `executor`): predictions through the dynamic Batcher.
"""

import asyncio
import base64
import binascii
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from bigmodel.serve.backend import Backend, Classifier, Limits, RequestError, TextGenerator
from bigmodel.serve.batching import Batcher
from bigmodel.serve.body import BodyLimit
from bigmodel.serve.images import declared_pixels

log = logging.getLogger("bigmodel")
# Images this small (encoded, and as their headers declare them) decode on the event loop: a thread hop
# costs more. Larger ones decode in a worker thread, so the loop goes on serving meanwhile.
INLINE_BYTES, INLINE_PIXELS = 64 * 1024, 256 * 256
GENERATE_KEYS = {
    "prompt",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
    "stop",
    "stream",
}


class Cancelled(Exception):
    """The request went away (a stream's client disconnected, or shutdown's deadline cancelled it):
    generation stops at the next token."""


async def read_json(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError) as e:  # also numbers of too many digits, nesting too deep
        raise RequestError(f"the body is not valid JSON ({type(e).__name__}: {str(e)[:200]})", status=400) from None
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, not {type(body).__name__}", status=400)
    return body


def json_inputs(body: dict, key: str, max_items: int) -> list[Any]:
    """The list of texts or images of a JSON predict request."""
    other = {"texts": "images", "images": "texts"}[key]
    unknown = sorted(set(body) - {key})
    if other in body:
        raise RequestError(f'this model classifies {key}, not {other}: send {{"{key}": [...]}}')
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; valid: {key}")
    if key not in body:
        raise RequestError(f'missing field {key!r}: send {{"{key}": [...]}}')
    values = body[key]
    if not isinstance(values, list) or not values:
        raise RequestError(f"{key} must be a non-empty list")
    if len(values) > max_items:
        raise RequestError(f"{key} has {len(values)} items; at most {max_items} per request (max_items)", status=413)
    return [decode_base64(v, f"images[{i}]") for i, v in enumerate(values)] if key == "images" else values


def decode_base64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"{where} is not a string of base64")
    if value.startswith("data:") and "," in value:  # a data URL: data:image/png;base64,....
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where} is not valid base64") from None


async def upload_inputs(request: Request, max_items: int) -> list[bytes]:
    """The image files of a multipart/form-data request, in order (any field name)."""
    form = await request.form(max_files=max_items + 1, max_fields=max_items + 1)
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise RequestError("the upload holds no file: send images as multipart files, e.g. curl -F images=@cat.png")
    if len(files) > max_items:
        raise RequestError(f"the upload holds {len(files)} files; at most {max_items} (max_items)", status=413)
    return [await f.read() for f in files]


def inline(images: list[bytes]) -> bool:
    """Whether decoding these images is little work, judged before decoding: by their encoded size and the
    pixels their headers declare (a few bytes of PNG can declare millions); unknown formats are not."""
    if sum(map(len, images)) > INLINE_BYTES:
        return False
    pixels = [declared_pixels(data) for data in images]
    return None not in pixels and sum(n or 0 for n in pixels) <= INLINE_PIXELS


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    backend: Backend,
    *,
    limits: Limits,
    max_batch_size: int,
    max_wait_ms: float,
    max_body_bytes: int,
    serving: dict | None = None,
) -> FastAPI:
    """The app serving `backend`; `serving` (the server's settings) is shown by GET /v1/model."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="model")  # one model call at a time
    generator = backend if isinstance(backend, TextGenerator) else None
    classifier: Classifier | None = None if isinstance(backend, TextGenerator) else backend
    batcher = Batcher(
        classifier.run if classifier is not None else None,
        executor,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
    )
    counts = {"generate": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()
        executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="bigmodel serve", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        return error(e.status, str(e))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception) -> JSONResponse:  # logged with its traceback by uvicorn
        return error(500, f"the server failed on this request: {type(e).__name__}: {e}")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "task": backend.task}

    @app.get("/v1/model")
    async def model() -> dict:
        return {**backend.info(), "serving": serving or {}}

    @app.get("/v1/stats")
    async def stats() -> dict:
        return {**batcher.stats(), **counts} if classifier is not None else counts

    @app.post("/v1/predict", response_model=dict)
    async def predict(request: Request) -> JSONResponse:
        if classifier is None:
            raise RequestError("this server holds a text generation model: POST /v1/generate", status=404)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            if classifier.input_key != "images":
                raise RequestError('this model classifies texts: send JSON {"texts": [...]}', status=415)
            values = await upload_inputs(request, limits.max_items)
        else:
            values = json_inputs(await read_json(request), classifier.input_key, limits.max_items)
        where = classifier.input_key
        prepare = lambda: [classifier.prepare(v, f"{where}[{i}]") for i, v in enumerate(values)]
        large = where == "images" and not inline(values)
        items = await run_in_threadpool(prepare) if large else prepare()  # large images decode off the loop
        return JSONResponse({"predictions": await batcher.submit(items)})

    @app.post("/v1/generate")
    async def generate(request: Request):
        if generator is None:
            raise RequestError(f"this server holds a classifier ({backend.task}): POST /v1/predict", status=404)
        body = await read_json(request)
        if unknown := sorted(set(body) - GENERATE_KEYS):
            raise RequestError(f"unknown field(s) {unknown}; valid: {sorted(GENERATE_KEYS)}")
        prompt, opts = generator.check_prompt(body.get("prompt", "")), generator.options(body)
        if not isinstance(body.get("stream", False), bool):
            raise RequestError(f"stream={body['stream']!r} is not valid: use true or false")
        counts["generate"] += 1
        if body.get("stream"):
            return StreamingResponse(
                events(generator, executor, prompt, opts),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        gone = threading.Event()  # set if this request is cancelled (shutdown's deadline): generation stops

        def on_text(piece: str) -> None:
            if gone.is_set():
                raise Cancelled

        try:
            loop = asyncio.get_running_loop()
            text = await loop.run_in_executor(executor, generator.generate, prompt, opts, on_text)
        finally:
            gone.set()
        return {"text": text, "seed": opts["seed"]}

    return app


def sse(data: dict, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"


async def events(backend: TextGenerator, executor: ThreadPoolExecutor, prompt: str, opts: dict):
    """Server-sent events: `data: {"text": piece}` as tokens appear, then `event: done` with the whole
    continuation (or `event: error`). A client that disconnects stops the generation."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    gone = threading.Event()

    def on_text(piece: str) -> None:
        if gone.is_set():
            raise Cancelled
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    job = loop.run_in_executor(executor, backend.generate, prompt, opts, on_text)
    job.add_done_callback(lambda _: pieces.put_nowait(None))  # after every piece the thread queued
    try:
        while (piece := await pieces.get()) is not None:
            yield sse({"text": piece})
        try:
            yield sse({"text": job.result(), "seed": opts["seed"]}, event="done")
        except Exception as e:
            log.exception("generation failed")
            yield sse({"error": f"generation failed: {type(e).__name__}: {e}"}, event="error")
    finally:
        gone.set()
