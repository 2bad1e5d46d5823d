"""``ferrum`` command line: compile models, generate text, chat, serve.

Each subcommand imports its side lazily: ``compile`` needs the TVM compiler, ``generate``/``chat``/
``serve`` only the runtime, so the serving commands work where only the TVM runtime is installed.
Any ``FerrumError`` ends the command with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from ferrum.errors import FerrumError
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.server.limits import RequestLimits  # the serve flags' defaults (no TVM import)


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto (the artifact's device), cpu, cuda, cuda:N or vulkan")


def _sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )


def _engine(artifact: str, device: str):
    from ferrum.engine import LlmInferenceEngine
    from runtime.engines import open_engine

    engine = open_engine(EngineConfig(artifact_path=artifact, device=device))
    if not isinstance(engine, LlmInferenceEngine):
        raise FerrumError(f"{artifact} is not a text-generation model")
    return engine


def cmd_compile(args: argparse.Namespace) -> None:
    if args.skip_existing:  # answered from the compile index, without TVM, when this request was compiled
        try:
            from compile.compile_index import quick_skip
        except ModuleNotFoundError as exc:
            if exc.name != "compile":
                raise
        else:
            found = quick_skip(args.model, args.target, args.quant, args.arch, Path(args.output), args.name,
                               args.max_binding)
            if found is not None:
                print(found)
                return
    try:
        from compile.compile_model import compile_model
    except ModuleNotFoundError as exc:
        if exc.name != "compile":
            raise
        raise FerrumError("this is the runtime-only install (ferrum-runtime): it serves compiled artifacts; "
                          "compiling needs the full project (pip install -e . from a checkout)") from None

    path = compile_model(
        args.model, args.target, args.quant, args.arch, Path(args.output), args.name, args.skip_existing,
        args.max_binding,
    )
    print(path)


async def _stream_to_stdout(engine, request: InferenceRequest) -> str:
    text = []
    async for chunk in await engine.infer_stream(request):
        if chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            text.append(chunk.text)
    return "".join(text)


def cmd_generate(args: argparse.Namespace) -> None:
    engine = _engine(args.artifact, args.device)
    prompt = args.prompt
    if not args.raw:
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    request = InferenceRequest(prompt=prompt, sampling_params=_sampling(args))

    async def run() -> None:
        await _stream_to_stdout(engine, request)
        sys.stdout.write("\n")
        await engine.shutdown()

    asyncio.run(run())


def cmd_chat(args: argparse.Namespace) -> None:
    engine = _engine(args.artifact, args.device)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print(f"Chatting with {engine.model_id}. Empty line or Ctrl-D to quit.", file=sys.stderr)

    async def run() -> None:
        while True:
            try:
                line = await asyncio.to_thread(input, "> ")
            except EOFError:
                break
            if not line.strip():
                break
            messages.append({"role": "user", "content": line})
            prompt = engine.tokenizer.apply_chat_template(messages)
            reply = await _stream_to_stdout(engine, InferenceRequest(prompt=prompt, sampling_params=_sampling(args)))
            sys.stdout.write("\n")
            messages.append({"role": "assistant", "content": reply})
        await engine.shutdown()

    asyncio.run(run())


def cmd_serve(args: argparse.Namespace) -> None:
    import logging

    from runtime.server.app import ServerOptions
    from runtime.server.serve import open_engines, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = EngineConfig(device=args.device, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                        kv_cache_tokens=args.kv_cache_tokens, max_queue_size=args.max_queue_size,
                        gpu_memory_utilization=args.gpu_memory_utilization, load_format=args.load_format)
    limits = RequestLimits(max_body_bytes=args.max_body_bytes, max_audio_seconds=args.max_audio_seconds)
    models = open_engines(args.artifacts, base)
    options = ServerOptions(api_key=args.api_key or os.environ.get("FERRUM_API_KEY") or None,
                            cors_origins=args.cors_origin, limits=limits)
    serve(models, args.host, args.port, options, args.shutdown_timeout)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def byte_size(text: str) -> int:
    """``65536``, ``64K``, ``128M`` or ``2G`` (binary units) as bytes."""
    unit = text[-1:].upper() if text[-1:].isalpha() else ""
    number = text[: len(text) - len(unit)]
    if unit not in BYTE_UNITS or not number.isdigit() or int(number) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes such as 65536, 64K, 128M or 2G")
    return int(number) * BYTE_UNITS[unit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferrum", description="Compile and serve LLMs with Apache TVM.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile a model into an artifact folder")
    p.add_argument("model", nargs="?", default=None, help="GGUF file, Hugging Face folder or known name")
    p.add_argument("--target", default=None, help="llvm, cuda or vulkan (webgpu) (default: a CUDA GPU, else a Vulkan GPU, else this CPU)")
    p.add_argument("--quant", default=None, help="q0f32 (CPU default), q0f16 (GPU default), q4f16 or q4f32 (int4 with float32 activations: the CPU default for Q4 GGUFs such as SmolLM2; on vulkan for adapters without shader-f16)")
    p.add_argument("--arch", default=None, help="CUDA architecture, e.g. sm_90a")
    p.add_argument("--max-binding", type=byte_size, default=None, metavar="BYTES",
                   help="vulkan: largest buffer one kernel argument binds, e.g. 128M (the default) or 2G; "
                        "larger parameters are split into row shards")
    p.add_argument("--output", default="artifacts", help="folder that receives the artifact")
    p.add_argument("--name", default=None, help="artifact name (default <model>-<quant>-<target>)")
    p.add_argument("--skip-existing", action="store_true", help="keep an intact artifact of the same name")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("generate", help="generate text for one prompt")
    p.add_argument("artifact")
    p.add_argument("--prompt", required=True)
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    _add_sampling(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat in the terminal")
    p.add_argument("artifact")
    p.add_argument("--system", default=None, help="system prompt")
    _add_sampling(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="serve artifacts over an OpenAI-compatible HTTP API")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="artifact folders (any modality)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* "
                   "(default: $FERRUM_API_KEY; none: open)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from ORIGIN ('*' for any); repeatable; default: CORS off")
    p.add_argument("--max-body-bytes", type=int, default=RequestLimits.max_body_bytes,
                   help="largest accepted request body, JSON or audio upload (default 32 MiB; over it: 413)")
    p.add_argument("--max-audio-seconds", type=float, default=RequestLimits.max_audio_seconds,
                   help=f"longest audio /v1/audio/transcriptions takes (default {RequestLimits.max_audio_seconds:g})")
    p.add_argument("--device", default="auto", help="auto (the artifact's device), cpu, cuda, cuda:N or vulkan")
    p.add_argument("--max-num-seqs", type=int, default=32, help="requests generated together")
    p.add_argument("--max-model-len", type=int, default=None, help="context limit (default: the model's)")
    p.add_argument("--kv-cache-tokens", type=int, default=None, help="KV cache size in tokens (default: sized "
                   "from memory)")
    p.add_argument("--max-queue-size", type=int, default=1024, help="waiting requests before 429")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of the GPU memory free after loading the weights that the KV cache and the "
                        "step workspace may take (default 0.9)")
    p.add_argument("--load-format", choices=("auto", "dummy"), default="auto",
                   help="auto: the artifact's weights; dummy: weights generated on the device from the artifact's "
                        "shapes (speed measurements of shape-only artifacts; the text is meaningless)")
    p.add_argument("--shutdown-timeout", type=_seconds, default=30.0, metavar="S",
                   help="on SIGINT/SIGTERM, let in-flight requests finish for at most S seconds, then cancel "
                        "them and exit (default 30)")
    p.set_defaults(func=cmd_serve)
    return parser


def _runtime_process() -> None:
    """Start the serving commands as a serving box runs: TVM's runtime library only, and no torch.

    The runtime never calls TVM's compiler, and loading ``libtvm_compiler.so`` costs ~0.5 s of each
    start; ``tvm_ffi`` imports torch whenever it is installed (it is, in a development venv: the
    tests compare against transformers), another ~1.3 s. Both are skipped, for a process started for
    one of these commands only (``main()`` without ``argv``), unless TVM is already imported;
    ``TVM_USE_RUNTIME_LIB`` set by the caller is kept."""
    if "tvm" in sys.modules or "tvm_ffi" in sys.modules:
        return
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    sys.modules.setdefault("torch", None)  # makes `import torch` raise ImportError, which tvm_ffi tolerates


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.func is not cmd_compile:  # a process of its own (console script, python -m)
        _runtime_process()
    try:
        args.func(args)
    except FerrumError as exc:
        print(f"ferrum: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
