#!/usr/bin/env bash
# H200 call: served and in-process throughput against the bare step, weights generated on the GPU.
# 1. SmolLM2-135M shape q0f16: bare batch_decode (gpu_bench, batches 1/64/128/256), then the engine
#    in-process (offline_bench --load-format dummy, 32-token prompts, 128 output tokens, c=1/64/128/256);
#    if .dev/base holds another checkout's ferrum/ runtime/ bench/ (e.g. main before a change), the
#    same offline run with its engine (weights from runtime/dummy_weights.py, patched in), for the A/B.
# 2. Llama-3-8B shape q0f16: bare batch_decode (batches 1/16/64/128/256), then `ferrum serve
#    --load-format dummy` and bench/serve_bench.py at c=1/16/64/256 (512-token prompts, 128 output tokens).
# PART=smollm2 or PART=llama3 runs only that half (default both); the SmolLM2 half first checks that
# the runner's staged device buffers give the tokens fresh tensors give, and writes the cProfile of
# the engine loop's steps at c=256 (h200_smollm2_offline_profile.txt). BARE=0 skips the Llama bare
# step; SERVE_C lists the served concurrencies; PART=switch compares GIL switch intervals in-process. Everything under $OUT ends up in one h200_engine.tar.
# Carry: .dev/carry/tvm_runtime.tar.gz and the shape artifacts (bench/compile_shape.py) as .dev/carry/*.tar.xz.
source bench/device/setup.sh >/dev/null
export PYTHONUNBUFFERED=1
D=/tmp/ferrum-data
S=$D/smollm2-135m-shape-q0f16-cuda
L=$D/llama3-8b-shape-q0f16-cuda
quiet() { grep -v "Warning\|warn"; }
PART=${PART:-all}
if [ "$PART" = switch ]; then  # A/B of the GIL switch interval, engine in-process (SmolLM2 shape)
  for si in 0.005 0.0005 0.0001; do
    timeout 60 python3 bench/offline_bench.py $S --load-format dummy --switch-interval $si --min-requests 16 \
      --concurrency 64 128 256 --prompt-len 32 --output-len 128 --max-num-seqs 256 --max-num-batched-tokens 2048 \
      --out "$OUT/h200_smollm2_offline_switch_$si.json" 2>&1 | quiet | grep -v phases
  done
  exit 0
fi
if [ "$PART" != llama3 ]; then
timeout 60 python3 -c "
import numpy as np
from runtime.artifact import LlmArtifact
from runtime.model_runner import KVCacheConfig, ModelRunner
runner = ModelRunner(LlmArtifact.open('$S'), load_format='dummy')
def tokens(staged):
    runner.create_kv_cache(KVCacheConfig(8, 8 * 256, 256, 16))
    if not staged:
        runner._token_buffer = runner._param_buffer = None
    ids, rng = list(range(8)), np.random.default_rng(0)
    for i in ids:
        runner.add_sequence(i)
    greedy = np.zeros((8, 5), np.float32)
    greedy[:, 1] = 1
    out = [runner.prefill_sample(ids, [rng.integers(100, 40000, 20 + i).tolist() for i in ids], greedy)]
    for _ in range(16):
        out.append(runner.decode_sample(ids, out[-1].tolist(), greedy))
    return np.stack(out + [runner.decode(ids, out[-1].tolist()).argmax(-1)])
a, b = tokens(True), tokens(False)
print('staged buffers give the same tokens as fresh tensors:', bool((a == b).all()), 'distinct tokens', len(set(a.ravel())))
" 2>&1 | quiet
timeout 150 python3 bench/gpu_bench.py $S --batches 1 64 128 256 --prefills 128 --repeats 3 \
  --out "$OUT/h200_smollm2_bare.json" 2>&1 | quiet
OFFLINE="--min-requests 16 --concurrency 1 64 128 256 --prompt-len 32 --output-len 128 --max-num-seqs 256 --max-num-batched-tokens 2048"
timeout 120 python3 bench/offline_bench.py $S --load-format dummy $OFFLINE --out "$OUT/h200_smollm2_offline.json" \
  --profile "$OUT/h200_smollm2_offline_profile.txt" 2>&1 | quiet
if [ -d .dev/base/runtime ]; then
  (cd .dev/base && cp ../../runtime/dummy_weights.py runtime/ && timeout 120 python3 -c "
import runpy, sys
sys.path.insert(0, '.')
import runtime.model_runner as mr
from runtime.dummy_weights import dummy_params
mr.ModelRunner._load_params = lambda self: dummy_params(self.artifact, self.device)
sys.argv = ['bench/offline_bench.py', '$S'] + '$OFFLINE'.split() + ['--out', '$OUT/h200_smollm2_offline_base.json']
runpy.run_path('bench/offline_bench.py', run_name='__main__')" 2>&1 | quiet)
fi
fi
[ "$PART" = smollm2 ] && { (cd "$OUT" && tar cf h200_engine.tar --remove-files h200_*); exit 0; }
[ "${BARE:-1}" = 1 ] && timeout 150 python3 bench/gpu_bench.py $L --batches 1 16 64 128 256 --prefills 512 --repeats 2 \
  --out "$OUT/h200_llama3_8b_bare.json" 2>&1 | quiet
python3 -m ferrum serve $L --load-format dummy --max-num-seqs 256 --max-model-len 1024 --port 8011 \
  > "$OUT/h200_llama3_8b_serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 120); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8011/health', timeout=2)" 2>/dev/null && break; sleep 1; done
NAME=$(basename $L)
for c in ${SERVE_C:-1 16 64 256}; do
  n=$(( c * 2 > 8 ? c * 2 : 8 ))
  timeout 100 python3 bench/serve_bench.py --base-url http://127.0.0.1:8011 --model $NAME --input-len 512 \
    --output-len 128 --num-prompts $n --concurrency $c --label "H200, $NAME, --load-format dummy" \
    --out "$OUT/h200_llama3_8b_serve_c$c.json" 2>&1 | tail -4
done
kill $SERVER; wait $SERVER
tail -5 "$OUT/h200_llama3_8b_serve.log"
(cd "$OUT" && tar cf h200_engine.tar --remove-files h200_*)
