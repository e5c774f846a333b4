"""`bigmodel serve ckpt_path=... [host=127.0.0.1 port=8000 max_batch_size=32 max_wait_ms=5]`: serve a
classifier or a GPT over HTTP (the API is in bigmodel.serve.app).

The model is loaded and the port bound before the server starts, so a bad checkpoint or a port in use
fails with one line. SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight
finish (at most graceful_timeout_s), then exits 0.
"""

import ipaddress
import logging
import signal
import socket
from contextlib import contextmanager

import torch
from omegaconf import DictConfig

from bigmodel.config import ConfigError, Device, ServeConfig, ServePrecision, check_ranges
from bigmodel.runtime import resolve_device

log = logging.getLogger("bigmodel")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, for uvicorn to listen on; one line when that is not possible."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(
            f"host={host!r}: not an address of this machine ({e.strerror or e}); "
            "use 127.0.0.1 (this machine only) or 0.0.0.0 (the network)"
        ) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
    # Connections inherit it: a response's headers and body go out at once, not 40 ms apart (Nagle's
    # algorithm waiting on the client's delayed ACK), which asyncio does not turn off on them here.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"port={port}: cannot listen on {host}:{port} ({e.strerror}); choose another port "
            "(port=0 picks a free one) or stop the process holding it"
        ) from None
    sock.listen(2048)  # connections made from now on wait until the server accepts them
    return sock


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@contextmanager
def stop_signals_return():
    """uvicorn re-raises the signal that stopped it once it has shut down; here that ends serve() normally
    (exit 0) instead of killing the process with the signal's default action."""
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve(cfg: DictConfig) -> None:
    import uvicorn

    from bigmodel.serve.app import create_app
    from bigmodel.serve.backend import Limits, load_backend

    check_ranges(cfg, ServeConfig)
    device = resolve_device(Device(cfg.device), key="device")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    limits = Limits(
        max_items=cfg.max_items,
        max_text_chars=cfg.max_text_chars,
        max_image_pixels=cfg.max_image_pixels,
        max_new_tokens=cfg.max_new_tokens,
    )
    precision = ServePrecision(cfg.precision).value
    backend = load_backend(
        cfg.ckpt_path, cfg.model_path, device, limits, threads=cfg.num_threads or None, precision=precision
    )
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    if not loopback(cfg.host):
        log.warning(
            f"host={cfg.host}: the server is reachable from the network, with no authentication; "
            "use host=127.0.0.1 unless that is what you want"
        )
    max_batch_size = cfg.max_batch_size if cfg.batching else 1
    serving = {
        "max_batch_size": max_batch_size,
        "max_wait_ms": cfg.max_wait_ms,
        "max_items": cfg.max_items,
        "max_body_mb": cfg.max_body_mb,
        "max_text_chars": cfg.max_text_chars,
        "max_image_pixels": cfg.max_image_pixels,
        "max_new_tokens": cfg.max_new_tokens,
        "device": str(device),
        "precision": "bf16" if getattr(backend, "dtype", None) == torch.bfloat16 else "fp32",
    }
    app = create_app(
        backend,
        limits=limits,
        max_batch_size=max_batch_size,
        max_wait_ms=cfg.max_wait_ms,
        max_body_bytes=int(cfg.max_body_mb * 2**20),
        serving=serving,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=cfg.access_log,
            lifespan="on",
            timeout_graceful_shutdown=cfg.graceful_timeout_s or None,
        )
    )
    batching = f"batches of up to {max_batch_size}, waiting {cfg.max_wait_ms:g} ms" if max_batch_size > 1 else "off"
    log.info(
        f"serving {backend.task} from {cfg.ckpt_path or cfg.model_path} on http://{host}:{port} "
        f"(batching: {batching}; device: {backend.device}; {serving['precision']})"
    )
    with stop_signals_return():
        server.run(sockets=[sock])
    log.info("stopped")
