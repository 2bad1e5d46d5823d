#!/usr/bin/env bash
# Last call on the H100: rebuild the SmolLM2 GGUF from the carried pieces, regenerate and check the
# weights of the carried CUDA artifacts, greedy check (q0f16 vs numpy reference, q4f16 vs q0f16),
# then the speed bench with the transformers peer.
source bench/device/setup.sh >/dev/null
D=/tmp/ferrum-data
cat $D/gguf.part0 $D/gguf.part1 $D/gguf.part2 > $D/smollm2.gguf
echo "$(cut -d' ' -f1 $D/gguf.sha256)  $D/smollm2.gguf" | sha256sum -c
for q in q0f16 q4f16; do python3 -m compile.restore_weights $D/smollm2-135m-instruct-$q-cuda $D/smollm2.gguf | tail -1; done
python3 bench/greedy_check.py $D/smollm2-135m-instruct-q4f16-cuda --baseline $D/smollm2-135m-instruct-q0f16-cuda \
  --gguf $D/smollm2.gguf --decode-tokens 256 --out "$OUT/h100_smollm2_greedy_check.json" 2>&1 | tail -8
python3 bench/gpu_bench.py $D/smollm2-135m-instruct-q0f16-cuda $D/smollm2-135m-instruct-q4f16-cuda \
  --peer --repeats 3 --out "$OUT/h100_smollm2_bench.json" 2>&1 | grep -v "W1122\|Warning\|warn" | tee "$OUT/h100_smollm2_bench.log"
