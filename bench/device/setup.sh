#!/usr/bin/env bash
# Source on the GPU machine: the runtime-only TVM and the few wheels the runtime needs, into a
# site folder outside the checkout (kept while the machine stays warm), and any carried pieces of
# the SmolLM2 GGUF into /tmp/ferrum-data. Needs .dev/c1 carried on the first call.
SITE=/tmp/ferrum-site
if [ ! -f "$SITE/tvm/__init__.py" ]; then
  mkdir -p "$SITE"
  tar xzf .dev/c1/tvm_runtime.tar.gz -C "$SITE"
  pip install -q --no-deps --target "$SITE" .dev/c1/*.whl 2>&1 | grep -v WARNING
fi
export PYTHONPATH="$SITE:$PWD"
mkdir -p /tmp/ferrum-data
for f in .dev/c*/gguf.part* .dev/c*/gguf.sha256; do [ -f "$f" ] && cp "$f" /tmp/ferrum-data/; done
for a in .dev/c*/smollm2-*-cuda; do [ -d "$a" ] && cp -r "$a" /tmp/ferrum-data/; done
ls /tmp/ferrum-data
