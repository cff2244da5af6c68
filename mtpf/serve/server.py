"""`python -m mtpf serve RELEASE [--app NAME=APP_DIR ...] [--host 127.0.0.1 --port 8080]` with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field

import torch

from mtpf.serve.app import ServeOptions, create_app
from mtpf.serve.engine import MERGED_WEIGHTS_MB, Engine, ServeError
from mtpf.serve.registry import AppRegistry, default_state_file

logger = logging.getLogger(__name__)


@dataclass
class ServeArguments:
    """Serve a release and apps over HTTP (see mtpf/serve/app.py for the endpoints)."""

    release: str = field(metadata={"help": "Release folder (backbone/ + adapters/): the one backbone in memory."})
    app: list[str] = field(default_factory=list, metadata={"help": "NAME=APP_DIR of apps to serve (repeatable)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; beyond loopback needs --api_key."})
    port: int = field(default=8080, metadata={"help": "Port to bind."})
    max_batch_tokens: int = field(
        default=0,
        metadata={
            "help": "Padded tokens per forward (rows x longest); 0: the backend's own (torch 1024, onnx 512: the "
            "fastest on 2 cores, bench/RESULTS.md section 12; try more on more cores)."
        },
    )
    max_wait_ms: float | None = field(
        default=None,
        metadata={
            "help": "How long the first queued row waits for company (default: the backend's own, torch 5, onnx 1: "
            "a slower forward gains more from company; bench/RESULTS.md section 12)."
        },
    )
    max_inputs: int = field(default=256, metadata={"help": "Texts per request."})
    max_body_bytes: int = field(default=2_000_000, metadata={"help": "Largest request body accepted."})
    threads: int = field(default=0, metadata={"help": "torch threads for the forward (0: torch's default)."})
    merged_weights_mb: float = field(
        default=MERGED_WEIGHTS_MB,
        metadata={
            "help": "Memory (MiB) for the merged weights of recently used slots and apps, so that a one-app "
            "batch costs what the backbone costs (0: none; each adapter costs its adapted linears' weights)."
        },
    )
    api_key: str | None = field(
        default=None, metadata={"help": "Required header value (default: $MTPF_API_KEY); needed beyond loopback."}
    )
    backend: str = field(
        default="torch",
        metadata={"help": "torch (PyTorch, apps can be added over HTTP) or onnx (ONNX Runtime, --onnx)."},
    )
    onnx: str | None = field(
        default=None, metadata={"help": "With --backend onnx: a shared-backbone export (mtpf export RELEASE --shared)."}
    )
    onnx_precision: str = field(default="fp32", metadata={"help": "With --backend onnx: fp32 or int8."})
    ray: bool = field(
        default=False,
        metadata={"help": "Serve on Ray Serve: --replicas processes (or nodes), apps loaded by name from --apps_dir."},
    )
    apps_dir: str | None = field(default=None, metadata={"help": "With --ray: a folder of app folders (one per name)."})
    replicas: int = field(default=1, metadata={"help": "With --ray: replicas, each holding the backbone."})
    max_apps_per_replica: int = field(
        default=8, metadata={"help": "With --ray: apps a replica holds at once (least recently used unloaded first)."}
    )
    apps_state: str | None = field(
        default=None,
        metadata={
            "help": "File that keeps the served apps across restarts (default: .RELEASE.serve-apps.json beside "
            "the release; 'none': apps added over HTTP live only in memory)."
        },
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_api_key(args: ServeArguments) -> str | None:
    """The API key (flag or $MTPF_API_KEY); refused without one beyond loopback."""
    api_key = args.api_key or os.environ.get("MTPF_API_KEY") or None
    if not is_loopback(args.host) and not api_key:
        raise SystemExit(f"--host {args.host} is reachable beyond this machine: give --api_key (or $MTPF_API_KEY).")
    return api_key


def serve_on_ray(args: ServeArguments) -> None:
    """`--ray`: the same API on Ray Serve (mtpf/serve/ray_serve.py); apps come from --apps_dir only."""
    try:
        from mtpf.serve.ray_serve import run_on_ray
    except ImportError as err:
        raise SystemExit(f"--ray needs Ray Serve: pip install 'mtpf[ray]' ({err}).") from err
    if not args.apps_dir:
        raise SystemExit("--ray serves the apps of --apps_dir DIR (one folder per app name); give it.")
    if args.app or args.backend != "torch":
        raise SystemExit("--ray takes its apps from --apps_dir (no --app) and runs the torch backend.")
    if args.replicas < 1 or args.max_apps_per_replica < 1:
        raise SystemExit("--replicas and --max_apps_per_replica: 1 or more.")
    api_key = checked_api_key(args)
    options = ServeOptions(args.max_batch_tokens, args.max_wait_ms, args.max_inputs, args.max_body_bytes, api_key)
    run_on_ray(args, options)


def build(args: ServeArguments):
    """The FastAPI app for `args` (the release and every --app loaded), or a clear refusal."""
    api_key = checked_api_key(args)
    if not args.merged_weights_mb >= 0:  # also refuses nan
        raise SystemExit(f"--merged_weights_mb {args.merged_weights_mb}: give a size in MB, 0 or more (0: no cache).")
    if args.backend == "onnx":
        return build_onnx(args, api_key)
    if args.backend != "torch":
        raise SystemExit(f"--backend {args.backend!r}: torch or onnx.")
    engine = Engine(args.release, args.threads or None, args.merged_weights_mb)
    for spec in args.app:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--app {spec!r}: use NAME=APP_DIR.")
        try:
            engine.add_app(name, path)
        except ServeError as err:
            raise SystemExit(f"--app {spec}: {err}") from err
    registry = AppRegistry(None if args.apps_state == "none" else args.apps_state or default_state_file(args.release))
    restore_apps(engine, registry)
    options = ServeOptions(args.max_batch_tokens, args.max_wait_ms, args.max_inputs, args.max_body_bytes, api_key)
    logger.info("serving %s with %d torch threads", sorted(engine.served), torch.get_num_threads())
    return create_app(engine, options, registry)


def build_onnx(args: ServeArguments, api_key: str | None):
    """The same API from ONNX Runtime: the apps are those of the export (no --app, no app registry)."""
    from mtpf.serve.onnx_engine import OnnxEngine

    if not args.onnx:
        raise SystemExit("--backend onnx needs --onnx EXPORT_DIR (mtpf export RELEASE --shared [APP ...] --slot tc).")
    if args.app:
        raise SystemExit("--backend onnx serves the apps of its export; export them with --shared instead of --app.")
    try:
        engine = OnnxEngine(args.release, args.onnx, args.onnx_precision, args.threads or None)
    except ServeError as err:
        raise SystemExit(str(err)) from err
    options = ServeOptions(args.max_batch_tokens, args.max_wait_ms, args.max_inputs, args.max_body_bytes, api_key)
    return create_app(engine, options)


def restore_apps(engine: Engine, registry: AppRegistry) -> None:
    """Serve again the apps of the last run (those the command line did not name); one that cannot be loaded any
    more (its folder moved) is reported and left out, the others still come back."""
    for name, path in registry.load().items():
        if name in engine.served:
            continue
        try:
            engine.add_app(name, path)
            logger.info("restored app %s from %s", name, registry.path)
        except ServeError as err:
            logger.warning("app %s of %s not restored: %s", name, registry.path, err)
    registry.save(engine.app_folders())


def serve(args: ServeArguments) -> None:
    import uvicorn

    if args.ray:
        return serve_on_ray(args)
    app = build(args)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
