"""The minimal peer: sentence-transformers' `encode` behind a 20-line FastAPI `/v1/embeddings` (what a user would
write instead of deploying a server). usage: python bench/load/st_server.py MODEL_DIR PORT [--backend onnx]"""

import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

model_dir, port = sys.argv[1], int(sys.argv[2])
backend = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--backend" else "torch"
model = SentenceTransformer(model_dir, device="cpu", backend=backend, trust_remote_code=True)
app = FastAPI()


class Body(BaseModel):
    model: str = ""
    input: str | list[str]


@app.post("/v1/embeddings")
def embeddings(body: Body) -> dict:
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=False).tolist()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
    }


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
