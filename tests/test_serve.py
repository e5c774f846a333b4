"""`bigmodel serve`: a real uvicorn server on a free loopback port, exercised over HTTP by concurrent
clients: predictions, dynamic batching, every kind of bad request, server-sent events, and (through the
CLI, in a subprocess) SIGTERM with a request in flight and the one-line start-up errors."""

import asyncio
import base64
import io
import json
import socket
import threading
from contextlib import contextmanager

import httpx
import pytest
import torch
import uvicorn
from PIL import Image

from bigmodel.checkpoint import FORMAT_VERSION, save_atomic
from bigmodel.config import ConfigError
from bigmodel.data.vocab import Vocab
from bigmodel.models.cnn import CNN
from bigmodel.models.gpt import GPT
from bigmodel.models.rnn import LSTMClassifier
from bigmodel.predict import classify
from bigmodel.serve.app import create_app
from bigmodel.serve.backend import Limits, load_backend
from bigmodel.serve.server import bind, loopback
from test_serve_images import png_with_bad_checksum

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
CLASSES = ["cat", "dog", "frog"]
CHARS = "\n abcdefgh"
LIMITS = Limits(max_items=4, max_text_chars=50, max_image_pixels=64 * 64, max_new_tokens=300)


def save_ckpt(
    path,
    target: str,
    args: dict,
    model_args: dict,
    model: torch.nn.Module,
    data: dict,
    monitor: str = "val/acc",
    best: float = 0.5,
) -> str:
    """A checkpoint as `bigmodel train` writes it: config, weights, the data module's state, best metric."""
    save_atomic(
        {
            "format": FORMAT_VERSION,
            "model": model.state_dict(),
            "model_args": model_args,
            "data": data,
            "config": {"model": {"_target_": target, **args}, "callbacks": {"model_checkpoint": {"monitor": monitor}}},
            "progress": {"global_step": 2, "epoch": 0},
            "callbacks": {"model_checkpoint": {"best": best}},
        },
        path,
    )
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    cnn = dict(stem_width=4, widths=[8])
    vocab = Vocab.build(["a good film", "a bad film"])
    lstm = dict(embed_dim=8, hidden_size=8)
    gpt = dict(block_size=16, n_layer=1, n_head=2, n_embd=8)
    return {
        "cnn": save_ckpt(
            root / "cnn.pt",
            "bigmodel.models.cnn.CNN",
            cnn,
            {"num_classes": 3, "in_channels": 3},
            CNN(3, 3, **cnn),
            {"class_names": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": [8, 8]},
        ),
        "lstm": save_ckpt(
            root / "lstm.pt",
            "bigmodel.models.rnn.LSTMClassifier",
            lstm,
            {"vocab_size": len(vocab), "num_classes": 2, "pad_idx": 0},
            LSTMClassifier(len(vocab), 2, 0, **lstm),
            {"vocab": vocab.state_dict(), "class_names": ["negative", "positive"]},
        ),
        "gpt": save_ckpt(
            root / "gpt.pt",
            "bigmodel.models.gpt.GPT",
            gpt,
            {"vocab_size": len(CHARS)},
            GPT(len(CHARS), **gpt),
            {"tokenizer": {"kind": "char", "chars": CHARS}, "block_size": 16},
            monitor="val/loss",
            best=2.3,
        ),
    }


@contextmanager
def running(
    ckpt: str | None,
    *,
    max_batch_size: int = 32,
    max_wait_ms: float = 5,
    max_body_bytes: int = 2**16,
    model_path: str | None = None,
):
    """A uvicorn server for `ckpt` (or an exported folder) in a thread, on a free loopback port: yields
    (base URL, backend, app)."""
    backend = load_backend(ckpt, model_path, torch.device("cpu"), LIMITS)
    app = create_app(
        backend, limits=LIMITS, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes
    )
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
        yield url, backend, app
    finally:
        server.should_exit = True
        thread.join(30)


def png(size=(8, 8), color=(200, 10, 10), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def post_all(url: str, bodies: list[dict], path: str = "/v1/predict") -> list[httpx.Response]:
    """Every body POSTed at once, by as many concurrent clients."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def test_image_predictions_match_the_model_and_concurrent_requests_are_batched(ckpts):
    images = [png(color=(30 * i, 255 - 30 * i, 7 * i), fmt="PNG" if i % 2 else "JPEG") for i in range(8)]
    with running(ckpts["cnn"], max_batch_size=8, max_wait_ms=500) as (url, backend, _):
        answers = asyncio.run(post_all(url, [{"images": [b64(im)]} for im in images]))
        stats = httpx.get(f"{url}/v1/stats").json()
        expected = backend.run([backend.prepare(im, "x") for im in images])  # one eager batch, here
    assert [r.status_code for r in answers] == [200] * 8
    for answer, want in zip(answers, expected):  # each client got the prediction of its own image
        (got,) = answer.json()["predictions"]
        assert got["label"] == want["label"] and got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert list(got["probabilities"]) == CLASSES and sum(got["probabilities"].values()) == pytest.approx(
            1, abs=1e-4
        )
    assert stats["requests"] == 8 and stats["batches"] < 8  # 8 requests within 500 ms: fewer model calls
    assert sum(int(k) * v for k, v in stats["batch_sizes"].items()) == 8 and max(map(int, stats["batch_sizes"])) > 1


def test_precision_follows_the_checkpoint_unless_set(ckpts, tmp_path):
    ckpt = torch.load(ckpts["cnn"], weights_only=True)
    ckpt["config"]["trainer"] = {"precision": "bf16"}  # a run trained (and validated) under bf16 autocast
    save_atomic(ckpt, tmp_path / "bf16.pt")
    cpu = torch.device("cpu")
    as_trained_fp32 = load_backend(ckpts["cnn"], None, cpu, LIMITS)
    as_trained_bf16 = load_backend(str(tmp_path / "bf16.pt"), None, cpu, LIMITS)
    forced_bf16 = load_backend(ckpts["cnn"], None, cpu, LIMITS, precision="bf16")
    forced_fp32 = load_backend(str(tmp_path / "bf16.pt"), None, cpu, LIMITS, precision="fp32")
    with pytest.raises(ConfigError, match="precision=bf16 applies to classifiers"):
        load_backend(ckpts["gpt"], None, cpu, LIMITS, precision="bf16")
    assert as_trained_fp32.dtype is None and forced_fp32.dtype is None
    assert as_trained_bf16.dtype == forced_bf16.dtype == torch.bfloat16
    items = [as_trained_fp32.prepare(png(color=(9 * i, 200 - 9 * i, 50)), "x") for i in range(4)]
    fp32, bf16 = as_trained_fp32.run(items), as_trained_bf16.run(items)
    assert fp32 == forced_fp32.run(items) and bf16 == forced_bf16.run(items)
    assert bf16 != fp32  # computed in bf16: the probabilities differ in their last digits ...
    for a, b in zip(bf16, fp32):  # ... and only there
        assert list(a["probabilities"].values()) == pytest.approx(list(b["probabilities"].values()), abs=0.02)


def test_unbatched_serving_runs_one_request_per_model_call(ckpts):
    with running(ckpts["cnn"], max_batch_size=1) as (url, _, _):
        answers = asyncio.run(post_all(url, [{"images": [b64(png())]}] * 6))
        stats = httpx.get(f"{url}/v1/stats").json()
    assert [r.status_code for r in answers] == [200] * 6 and stats["batch_sizes"] == {"1": 6}


def test_text_predictions_and_model_info(ckpts):
    texts = ["a good film", "a bad film , really", "good"]
    with running(ckpts["lstm"]) as (url, backend, _):
        answer = httpx.post(f"{url}/v1/predict", json={"texts": texts}).json()
        info = httpx.get(f"{url}/v1/model").json()
    probs = classify(backend.model, backend.vocab, texts)
    assert [p["label"] for p in answer["predictions"]] == [["negative", "positive"][i] for i in probs.argmax(-1)]
    got = [v for p in answer["predictions"] for v in p["probabilities"].values()]
    assert got == pytest.approx(probs.flatten().tolist(), abs=1e-5)
    assert info["task"] == "text-classification" and info["classes"] == ["negative", "positive"]
    assert info["parameters"] == sum(p.numel() for p in backend.model.parameters()) > 0
    assert info["metrics"] == {"val/acc": 0.5} and info["config"]["model"]["hidden_size"] == 8


def test_multipart_upload_of_image_files(ckpts):
    with running(ckpts["cnn"]) as (url, _, _):
        files = [("images", ("a.png", png(), "image/png")), ("images", ("b.jpg", png(fmt="JPEG"), "image/jpeg"))]
        up = httpx.post(f"{url}/v1/predict", files=files)
        same = httpx.post(f"{url}/v1/predict", json={"images": [b64(png()), b64(png(fmt="JPEG"))]})
        empty = httpx.post(f"{url}/v1/predict", files=[("images", ("a.png", b"", "image/png"))])
        no_file = httpx.post(f"{url}/v1/predict", files=[("note", (None, "no file here"))])
        too_many = httpx.post(f"{url}/v1/predict", files=[("images", ("a.png", png(), "image/png"))] * 5)
    assert up.status_code == 200 and up.json() == same.json()
    assert empty.status_code == 422 and "images[0] cannot be decoded" in empty.json()["error"]
    assert no_file.status_code == 422 and "holds no file" in no_file.json()["error"]
    assert too_many.status_code == 413 and "at most 4" in too_many.json()["error"]


IMAGE_REFUSALS = [  # (body, expected status, words in the error)
    (b'{"images": [', 400, "not valid JSON"),
    (b'["a"]', 400, "JSON object"),
    (b"", 400, "not valid JSON"),
    (b'{"texts": ["a film"]}', 422, "classifies images"),
    (b'{"pictures": []}', 422, "unknown field"),
    (b"{}", 422, "missing field 'images'"),
    (b'{"images": "abc"}', 422, "non-empty list"),
    (b'{"images": []}', 422, "non-empty list"),
    (b'{"images": [5]}', 422, "images[0] is not a string"),
    (b'{"images": ["not base64!"]}', 422, "images[0] is not valid base64"),
    (json.dumps({"images": [b64(png()), b64(b"hello, not an image")]}).encode(), 422, "images[1] cannot be decoded"),
    (json.dumps({"images": [b64(png()[:40])]}).encode(), 422, "cannot be decoded"),  # truncated
    (json.dumps({"images": [b64(png())] * 5}).encode(), 413, "at most 4"),
    (json.dumps({"images": [b64(png((100, 100)))]}).encode(), 413, "100x100 pixels"),
    (json.dumps({"images": ["A" * 70_000]}).encode(), 413, "larger than 65536 bytes"),
    (b'{"images": [], "n": ' + b"1" * 5000 + b"}", 400, "not valid JSON"),  # more digits than Python reads
    (b"[" * 5000, 400, "not valid JSON"),  # nested deeper than the parser goes
    (json.dumps({"images": [b64(png_with_bad_checksum())]}).encode(), 422, "images[0] cannot be decoded"),
]


def test_bad_requests_get_a_4xx_with_a_json_error_and_the_server_keeps_serving(ckpts):
    good = {"images": [b64(png())]}

    async def scenario(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            headers = {"content-type": "application/json"}
            bad = [client.post("/v1/predict", content=body, headers=headers) for body, _, _ in IMAGE_REFUSALS]
            return await asyncio.gather(*bad, *(client.post("/v1/predict", json=good) for _ in range(4)))

    with running(ckpts["cnn"]) as (url, _, _):
        answers = asyncio.run(scenario(url))
        chunked = httpx.post(f"{url}/v1/predict", content=iter([b'{"images": ["', b"A" * 70_000, b'"]}']))
        wrong_route = httpx.post(f"{url}/v1/generate", json={"prompt": "a"})
        after = httpx.post(f"{url}/v1/predict", json=good)
    for (body, status, words), answer in zip(IMAGE_REFUSALS, answers):
        assert answer.status_code == status and words in answer.json()["error"], (body[:40], answer.text)
    assert all(a.status_code == 200 for a in answers[len(IMAGE_REFUSALS) :])  # sent alongside the bad ones
    assert chunked.status_code == 413 and "larger than" in chunked.json()["error"]  # no content-length
    assert wrong_route.status_code == 404 and "/v1/predict" in wrong_route.json()["error"]
    assert after.status_code == 200 and len(after.json()["predictions"]) == 1


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"texts": ["x" * 51]}, 413, "at most 50"),
        ({"texts": ["fine", 3]}, 422, "texts[1] is not a string"),
        ({"texts": ["  "]}, 422, "texts[0] is empty"),
        ({"texts": ["a"] * 5}, 413, "at most 4"),
        ({"images": [b64(png())]}, 422, "classifies texts"),
    ],
)
def test_bad_text_requests(ckpts, body, status, words):
    with running(ckpts["lstm"]) as (url, _, _):
        answer = httpx.post(f"{url}/v1/predict", json=body)
        upload = httpx.post(f"{url}/v1/predict", files=[("images", ("a.png", png(), "image/png"))])
        after = httpx.post(f"{url}/v1/predict", json={"texts": ["a good film"]})
    assert answer.status_code == status and words in answer.json()["error"]
    assert upload.status_code == 415 and after.status_code == 200


def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
            name = "message"
    return events


def test_generate_and_stream_server_sent_events(ckpts):
    request = {"prompt": "abc", "max_new_tokens": 30, "seed": 7, "temperature": 1.0, "top_k": 5}
    with running(ckpts["gpt"]) as (url, _, _):
        plain = httpx.post(f"{url}/v1/generate", json=request).json()
        again = httpx.post(f"{url}/v1/generate", json=request).json()
        other = httpx.post(f"{url}/v1/generate", json={**request, "seed": 8}).json()
        with httpx.stream("POST", f"{url}/v1/generate", json={**request, "stream": True}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_events(response)
        drawn = httpx.post(f"{url}/v1/generate", json={"prompt": "a", "max_new_tokens": 3}).json()
        info = httpx.get(f"{url}/v1/model").json()
    assert len(plain["text"]) == 30 and set(plain["text"]) <= set(CHARS)  # one character a token
    assert plain == again and other["text"] != plain["text"]  # the seed decides the sample
    pieces = [data["text"] for name, data in events if name == "message"]
    assert len(pieces) > 1 and events[-1][0] == "done"  # streamed as it was produced
    assert "".join(pieces) == events[-1][1]["text"] == plain["text"]
    assert isinstance(drawn["seed"], int)  # no seed given: one is drawn and reported
    assert info["task"] == "text-generation" and info["vocab_size"] == len(CHARS)


def test_generate_at_the_edges_of_the_ranges(ckpts):
    with running(ckpts["gpt"]) as (url, _, _):
        cold = httpx.post(f"{url}/v1/generate", json={"prompt": "a", "max_new_tokens": 3, "temperature": 1e-320})
        greedy = httpx.post(f"{url}/v1/generate", json={"prompt": "a", "max_new_tokens": 3, "temperature": 0})
        penalty = httpx.post(f"{url}/v1/generate", json={"prompt": "ab", "repetition_penalty": 1e-320, "seed": 1})
    assert cold.status_code == greedy.status_code == penalty.status_code == 200
    assert cold.json()["text"] == greedy.json()["text"]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"max_new_tokens": 301}, "at most 300"),
        ({"temperature": -1}, "temperature=-1"),
        ({"top_k": 0}, "top_k=0"),
        ({"top_k": 11}, "vocabulary of 10"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"seed": "x"}, "seed='x'"),
        ({"seed": -1}, "seed=-1"),
        ({"stream": "yes"}, "stream='yes'"),
        ({"prompt": ["a"]}, "prompt is not a string"),
        ({"prompt": "xyz"}, "not in this model's vocabulary"),
        ({"prompt": "a" * 51}, "at most 50"),
        ({"promt": "a"}, "unknown field"),
        ({"stop": ["a"] * 17}, "at most 16 strings"),
        ({"stop": ["a" * 201]}, "of 200 characters"),
    ],
)
def test_generate_refuses_options_out_of_range(ckpts, body, words):
    with running(ckpts["gpt"]) as (url, _, _):
        answer = httpx.post(f"{url}/v1/generate", json=body)
        after = httpx.post(f"{url}/v1/generate", json={"prompt": "a", "max_new_tokens": 2})
    assert 400 <= answer.status_code < 500 and words in answer.json()["error"]
    assert after.status_code == 200


def test_load_backend_refusals(ckpts, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of ckpt_path"):
        load_backend(None, None, torch.device("cpu"), LIMITS)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="junk.pt"):
        load_backend(str(tmp_path / "junk.pt"), None, torch.device("cpu"), LIMITS)


def test_the_listening_socket_sends_small_writes_at_once():
    with bind("127.0.0.1", 0) as sock:  # accepted connections inherit TCP_NODELAY (a 40 ms stall per answer without)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockname()[0] == "127.0.0.1"


def test_loopback_hosts():
    assert loopback("127.0.0.1") and loopback("::1") and loopback("localhost")
    assert not loopback("0.0.0.0") and not loopback("192.168.1.4")
