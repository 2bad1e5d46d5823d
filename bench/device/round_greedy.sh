#!/usr/bin/env bash
# H100 call after round_kernels.sh on the same warm machine: joins the SmolLM2 GGUF from its two
# carried halves, regenerates the weights of the carried CUDA artifacts (checked against their
# manifests), then greedy correctness (q0f16 vs the numpy reference, q4f16 vs both), seeded GPU vs
# host sampling, and engine / runner batch-1 decode speed.
source bench/device/setup.sh >/dev/null
D=/tmp/ferrum-data
export PYTHONUNBUFFERED=1
cat $D/gguf.part0 $D/gguf.part1 > $D/smollm2.gguf
echo "$(cat $D/gguf.sha256)  $D/smollm2.gguf" | sha256sum -c
for q in q0f16 q4f16; do python3 -m compile.restore_weights $D/smollm2-135m-instruct-$q-cuda $D/smollm2.gguf | tail -1; done
python3 bench/greedy_check.py $D/smollm2-135m-instruct-q4f16-cuda --baseline $D/smollm2-135m-instruct-q0f16-cuda \
  --gguf $D/smollm2.gguf --decode-tokens 256 --out "$OUT/h100_smollm2_greedy_check.json" 2>&1 | grep -v "Warning\|warn" | tail -12
