"""`mtpf serve`: one backbone in memory, every slot and app a LoRA on it, mixed-app micro-batches over HTTP.

`engine.py` holds the model and answers a batch of rows; `batching.py` queues rows and forms the batches;
`app.py` is the FastAPI application (endpoints, checks, API key, metrics); `server.py` runs it with uvicorn.
"""

from mtpf.serve.app import ServeOptions, create_app
from mtpf.serve.engine import Engine, ServeError

__all__ = ["Engine", "ServeError", "ServeOptions", "create_app"]
