#!/usr/bin/env bash
# Source on the GPU machine. Installs, once per machine, what `carry` brought under .dev/carry*/:
# the runtime-only TVM bundle (tvm_runtime.tar.gz, tvm_ffi for the machine's Python inside) and
# any wheels, into a site folder outside the checkout; unpacks carried artifacts (*.tar.xz) and
# SmolLM2 GGUF pieces (gguf.part*, gguf.sha256) into /tmp/ferrum-data, which outlives one call
# while the machine stays warm.
SITE=/tmp/ferrum-site
DATA=/tmp/ferrum-data
mkdir -p "$SITE" "$DATA"
if [ ! -f "$SITE/tvm/__init__.py" ]; then
  bundle=$(ls .dev/carry*/tvm_runtime.tar.gz 2>/dev/null | head -1)
  [ -n "$bundle" ] && tar xzf "$bundle" -C "$SITE"
fi
for w in .dev/carry*/*.whl; do
  [ -f "$w" ] && pip install -q --no-deps --no-compile --target "$SITE" "$w" 2>&1 | grep -v WARNING
done
export PYTHONPATH="$SITE:$PWD"
for f in .dev/carry*/gguf.part* .dev/carry*/gguf.sha256; do [ -f "$f" ] && cp "$f" "$DATA/"; done
for a in .dev/carry*/*.tar.xz; do [ -f "$a" ] && tar xJf "$a" -C "$DATA"; done
ls "$DATA"
