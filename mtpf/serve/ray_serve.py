"""`mtpf serve RELEASE --ray --apps_dir DIR [--replicas N]`: the same HTTP API on Ray Serve, for more than one process
or machine.

    client ──► Ingress (Ray Serve's HTTP proxy, FastAPI) ──► Replica × N
                 reads the body's `model`;                    each: the backbone (Engine) + the single-process
                 an app of DIR is routed by Ray to a replica   app of `mtpf serve` (same routes, checks, batching,
                 that already holds it (multiplexing)          OpenAI-shaped answers and errors)

A replica loads an app the first time a request names it (`@serve.multiplexed`), from `DIR/<name>/` (a folder of
`mtpf finetune`), and holds at most `--max_apps_per_replica` of them (least recently used unloaded first); Ray routes
a request for an app to a replica that already holds it where one does. Replicas keep no state of their own, so Ray
may add, remove or restart them at any time: apps are added by putting a folder into DIR (POST/DELETE /v1/apps are
the single-process server's; here they answer 405 with that advice).

On a multi-node cluster the same command runs against it: `ray start --head` on one node, `ray start
--address=HEAD:6379` on the others, then `RAY_ADDRESS=HEAD:6379 mtpf serve RELEASE --ray --apps_dir DIR --replicas N`
on the head, with RELEASE and DIR on a path every node reads (a shared file system, or the same copy on each).
"""

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

# No `from __future__ import annotations` here: Ray pickles the ingress by value, and FastAPI must read the routes'
# annotations as objects (string annotations would name classes the pickled functions do not carry).
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from mtpf.serve.routes import ServeOptions

if TYPE_CHECKING:
    from mtpf.serve.server import ServeArguments

logger = logging.getLogger(__name__)
DROPPED_HEADERS = {"content-length", "transfer-encoding", "connection", "host"}  # the proxies set their own
# Ray Serve gives its HTTP proxy 5 s to start and answer a health check: too little on a small, busy machine (the
# proxy was killed before it started on 2 loaded cores). Set before Ray starts; an operator's own values win.
PATIENT_PROXY = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60"}


def patient_proxy_environment() -> None:
    for key, value in PATIENT_PROXY.items():
        os.environ.setdefault(key, value)


class LoadedApp:
    """An app held by a replica; Ray calls `__del__` when its LRU unloads it, which unloads the adapter."""

    def __init__(self, replica: Any, name: str) -> None:
        self.replica, self.name = replica, name

    async def __del__(self) -> None:
        await self.replica.client.delete(f"/v1/apps/{self.name}", headers=self.replica.auth)
        logger.info("replica unloaded app %s", self.name)


class AppNotLoaded(Exception):
    """A replica could not load an app; its HTTP status and OpenAI-shaped body go back to the client as they are."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def app_folders(apps_dir: str | Path) -> dict[str, Path]:
    """{name: folder} of every app in the directory (a folder with `mtpf_app.json`)."""
    folder = Path(apps_dir)
    if not folder.is_dir():
        raise ValueError(f"--apps_dir {apps_dir}: not a folder.")
    return {child.name: child for child in sorted(folder.iterdir()) if (child / "mtpf_app.json").is_file()}


def is_app_folder(apps_dir: str | Path, name: str) -> bool:
    """Whether `name` is an app of the directory: one stat per request, not a listing of the directory."""
    child = Path(name).name == name and name not in ("", ".", "..")  # a folder of the directory, never a path out
    return child and (Path(apps_dir) / name / "mtpf_app.json").is_file()


def requested_model(body: bytes) -> str | None:
    """The `model` a JSON request body names, if any (the routing key)."""
    try:
        value = json.loads(body).get("model") if body else None
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def build_application(args: "ServeArguments", options: ServeOptions):
    """The Ray Serve application: an ingress in front of `args.replicas` replicas, each holding the release's backbone
    and up to `args.max_apps_per_replica` apps of `args.apps_dir`."""
    replica = replica_deployment(args, options).options(num_replicas=args.replicas).bind()
    return ingress_deployment(args.apps_dir).bind(replica)


def replica_deployment(args: "ServeArguments", options: ServeOptions):
    """A replica: the backbone and the single-process app, apps loaded on demand by name (LRU-bounded)."""
    from ray import serve

    release, apps_dir, threads = args.release, args.apps_dir, args.threads or None

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Replica:
        """The backbone and the single-process app; apps loaded on demand by name."""

        def __init__(self) -> None:
            import httpx

            from mtpf.serve.app import create_app
            from mtpf.serve.engine import Engine

            self.engine = Engine(release, threads, args.merged_weights_mb)
            self.app = create_app(self.engine, options)
            self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://replica")
            self.lifespan = None
            self.auth = {"authorization": f"Bearer {options.api_key}"} if options.api_key else {}

        async def started(self) -> None:
            """Start the app's batcher once, in this replica's own event loop."""
            if self.lifespan is None:
                self.lifespan = self.app.router.lifespan_context(self.app)
                await self.lifespan.__aenter__()

        @serve.multiplexed(max_num_models_per_replica=args.max_apps_per_replica)
        async def load_app(self, name: str) -> "LoadedApp":
            await self.started()
            response = await self.client.post(
                "/v1/apps", json={"name": name, "path": str(Path(apps_dir) / name)}, headers=self.auth
            )
            if response.status_code != 201:  # the app's own 4xx (a broken folder, another backbone), passed on
                raise AppNotLoaded(response.status_code, response.content)
            logger.info("replica loaded app %s", name)
            return LoadedApp(self, name)

        async def forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
            """One HTTP request answered by this replica's app (the app named by the request loaded first)."""
            await self.started()
            name = serve.get_multiplexed_model_id()
            if name:
                try:
                    await self.load_app(name)
                except AppNotLoaded as refused:
                    return refused.status, {"content-type": "application/json"}, refused.body
            response = await self.client.request(method, path, headers=headers, content=body)
            replica = serve.get_replica_context().replica_id.unique_id
            kept = {k: v for k, v in response.headers.items() if k.lower() not in DROPPED_HEADERS}
            return response.status_code, kept | {"x-mtpf-replica": replica}, response.content

    return Replica


def ingress_deployment(apps_dir: str):
    """The front: reads the routing key and hands each request to a replica; answers the list of models itself."""
    from ray import serve

    ingress = FastAPI(title="mtpf serve (Ray)", docs_url=None, redoc_url=None, openapi_url=None)

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(ingress)
    class Ingress:
        """Reads the routing key and hands the request to a replica; answers the list of models itself."""

        def __init__(self, replica: Any) -> None:
            self.replica = replica

        @ingress.api_route("/v1/apps{rest:path}", methods=["GET", "POST", "DELETE"])
        async def apps(self, rest: str) -> JSONResponse:
            message = f"on Ray, apps are the folders of {apps_dir}: add or remove a folder there."
            error = {"message": message, "type": "invalid_request_error", "param": None, "code": "method_not_allowed"}
            return JSONResponse({"error": error}, 405)

        @ingress.api_route("/{path:path}", methods=["GET", "POST"])
        async def forward(self, path: str, request: Request) -> Response:
            body = await request.body()
            model = requested_model(body) if request.method == "POST" else None
            handle = self.replica
            if model is not None and is_app_folder(apps_dir, model):
                handle = handle.options(multiplexed_model_id=model)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED_HEADERS}
            status, answer_headers, content = await handle.forward.remote(request.method, f"/{path}", headers, body)
            if path == "v1/models" and status == 200:
                content = json.dumps(with_directory_apps(json.loads(content), apps_dir)).encode()
            return Response(content, status, headers=answer_headers)

    return Ingress


def with_directory_apps(models: dict, apps_dir: str | Path) -> dict:
    """The list of models with every app of the directory in it (a replica lists only what it holds)."""
    from mtpf.apps import get_app_kind, read_app

    listed = {entry["id"] for entry in models["data"]}
    for name, folder in app_folders(apps_dir).items():
        if name in listed:
            continue
        app = read_app(folder)
        endpoints = ["embeddings", get_app_kind(app["task"]).endpoint]
        labels = list(app["id2label"].values())
        models["data"].append({"id": name, "object": "model", "kind": app["task"], "endpoints": endpoints,
                               "path": str(folder), "labels": labels})  # fmt: skip
    return models


def run_on_ray(args: "ServeArguments", options: ServeOptions) -> None:
    """Start (or join, with RAY_ADDRESS) a Ray cluster and serve until interrupted."""
    import ray
    from ray import serve

    app_folders(args.apps_dir)  # refuse a missing directory before Ray starts
    patient_proxy_environment()
    ray.init(ignore_reinit_error=True, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_application(args, options), name="mtpf", route_prefix="/", blocking=True)
