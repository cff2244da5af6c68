"""`mtpf serve`: one backbone in memory, every slot and app a LoRA on it, mixed-app micro-batches over HTTP.

`engine.py` holds the model and answers a batch of rows; `batching.py` queues rows and forms the batches;
`schemas.py` is the HTTP contract (request bodies, errors); `routes.py` one router per resource over a shared
state; `app.py` assembles the FastAPI application (body guard, error handlers); `server.py` runs it with uvicorn.
"""

from mtpf.serve.app import ServeOptions, create_app
from mtpf.serve.engine import Engine, ServeError

__all__ = ["Engine", "ServeError", "ServeOptions", "create_app"]
