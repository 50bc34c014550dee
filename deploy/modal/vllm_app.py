"""vLLM's OpenAI-compatible server on Modal, with the warm pool vllm-autoscaler drives.

    modal deploy deploy/modal/vllm_app.py

The app and function names are those of `targets[*].modal` in config/default.yaml
(`app: vllm-inference`, `function: serve`). The autoscaler settings below are the deployed
defaults; the controller overrides min_containers and buffer_containers at runtime (and
max_containers and scaledown_window from its config) through `Function.autoscaler`. A
redeploy resets them to these values until the controller's next tick re-applies its own.
"""

from __future__ import annotations

import subprocess

import modal

APP_NAME = "vllm-inference"
FUNCTION_NAME = "serve"
MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
GPU = "A10G"
PORT = 8000
MAX_INPUTS = 16  # requests one container takes at once: ModalPool.max_inputs
MIN_CONTAINERS = 0
BUFFER_CONTAINERS = 0
MAX_CONTAINERS = 20
SCALEDOWN_WINDOW_S = 60

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("vllm==0.11.0", "huggingface_hub[hf_transfer]")
    .env({"HF_HUB_ENABLE_HF_TRANSFER": "1", "VLLM_NO_USAGE_STATS": "1"})
)
# Weights downloaded once and shared by every container (a cold start loads, not downloads).
hf_cache = modal.Volume.from_name("vllm-hf-cache", create_if_missing=True)

app = modal.App(APP_NAME)


@app.function(
    name=FUNCTION_NAME,
    image=image,
    gpu=GPU,
    min_containers=MIN_CONTAINERS,
    buffer_containers=BUFFER_CONTAINERS,
    max_containers=MAX_CONTAINERS,
    scaledown_window=SCALEDOWN_WINDOW_S,
    timeout=60 * 60,
    volumes={"/root/.cache/huggingface": hf_cache},
    secrets=[modal.Secret.from_name("huggingface", required_keys=["HF_TOKEN"])],
)
@modal.concurrent(max_inputs=MAX_INPUTS)
@modal.web_server(port=PORT, startup_timeout=10 * 60)
def serve() -> None:
    subprocess.Popen([
        "vllm", "serve", MODEL, "--host", "0.0.0.0", f"--port={PORT}",
        f"--max-num-seqs={MAX_INPUTS}", "--max-model-len=8192",
    ])
