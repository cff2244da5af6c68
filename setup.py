from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mtpf",
    version="0.1.0",
    description="Multi-Task Pre-Finetuning with Task-Primary LoRAs for lightweight BERT-like encoders",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mtpf", "mtpf.*"]),
    py_modules=["configuration_mtpf", "modeling_mtpf", "train_mtpf", "push_to_hub"],
    # torch is left unpinned on purpose: install the build that fits your machine first (CPU, CUDA, ...).
    install_requires=[
        "torch>=2.1",
        "transformers>=5.0,<6",
        "peft>=0.21",
        "accelerate>=1.0",
        "datasets>=3.0",
        "safetensors>=0.4",
        "huggingface_hub>=0.30",
        "scikit-learn>=1.3",
        "seqeval>=1.2",
        "pyyaml>=6",
        "tqdm",
        "tensorboard",
    ],
    extras_require={
        "eval": ["mteb>=2.0", "sentence-transformers>=3.0", "matplotlib"],
        "export": ["onnx>=1.17", "onnxruntime>=1.20", "onnxscript>=0.2"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "prometheus_client>=0.20"],
        "ray": ["ray[serve]>=2.40", "httpx>=0.27"],
        "dev": [
            "pytest>=8",
            "ruff>=0.6",
            "mteb>=2.0",
            "sentence-transformers>=3.0",
            "matplotlib",
            "onnx>=1.17",
            "onnxruntime>=1.20",
            "onnxscript>=0.2",
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "prometheus_client>=0.20",
            "httpx>=0.27",
            "openai>=1.0",
            "langchain-openai>=0.2",
            "schemathesis>=4.0",
            "ray[serve]>=2.40",
            "locust>=2.20",  # bench/serve_locust.py (its test runs the load tool)
        ],
    },
    entry_points={
        "console_scripts": [
            "mtpf=mtpf.cli:main",
            "mtpf-train=train_mtpf:cli",
            "mtpf-push=push_to_hub:cli",
            "mtpf-eval=mtpf.cli:eval_cli",
        ]
    },
)
