#!/usr/bin/env bash
# Source on the GPU machine: the runtime-only TVM and the few wheels the runtime needs, into a
# site folder outside the checkout (kept while the machine stays warm). Needs .dev/c1 carried.
SITE=/tmp/ferrum-site
if [ ! -f "$SITE/tvm/__init__.py" ]; then
  mkdir -p "$SITE"
  tar xzf .dev/c1/tvm_runtime.tar.gz -C "$SITE"
  pip install -q --no-deps --target "$SITE" .dev/c1/*.whl
fi
export PYTHONPATH="$SITE:$PWD"
mkdir -p /tmp/ferrum-data
[ -f .dev/c1/gguf.part00 ] && cp .dev/c1/gguf.part00 /tmp/ferrum-data/
