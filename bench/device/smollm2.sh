#!/usr/bin/env bash
# H100 call after llama3_8b.sh on the same warm machine (the SmolLM2 GGUF comes in two halves, one
# per call): regenerate the weights of the carried CUDA artifacts (checked against their
# manifests), greedy correctness (q0f16 vs the numpy reference, q4f16 vs both), seeded GPU vs host
# sampling through the engine, engine/runner decode speed, then the speed bench with the peer.
source bench/device/setup.sh >/dev/null
export PYTHONUNBUFFERED=1
D=/tmp/ferrum-data
cat $D/gguf.part0 $D/gguf.part1 > $D/smollm2.gguf
echo "$(cat $D/gguf.sha256)  $D/smollm2.gguf" | sha256sum -c || exit 1
for q in q0f16 q4f16; do python3 -m compile.restore_weights $D/smollm2-135m-instruct-$q-cuda $D/smollm2.gguf | tail -1; done
python3 bench/greedy_check.py $D/smollm2-135m-instruct-q4f16-cuda --baseline $D/smollm2-135m-instruct-q0f16-cuda \
  --gguf $D/smollm2.gguf --decode-tokens 256 --out "$OUT/h100_smollm2_greedy_check.json" 2>&1 | grep -v "Warning\|warn" | tail -6
python3 bench/gpu_bench.py $D/smollm2-135m-instruct-q4f16-cuda $D/smollm2-135m-instruct-q0f16-cuda --peer --profile \
  --repeats 3 --compile-timeout 150 --out "$OUT/h100_smollm2_bench.json" 2>&1 | grep -v "Warning\|warn"
