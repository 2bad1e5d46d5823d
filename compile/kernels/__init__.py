"""Ferrum's own CUDA kernels (``cuda/``), built with nvcc and linked into CUDA artifacts.

TVM 0.27 cannot emit tensor-core code (``s_tir`` tensorization segfaults on every intrinsic) and
its generated GEMVs stop well short of the memory bandwidth, so the linear layers of CUDA LLM
builds call these kernels instead: fused RMSNorm/SwiGLU/residual GEMVs for decode, an mma.sync
GEMM for prefill, and a sampler. ``build`` compiles them; ``ops`` exposes them to
``tvm.relax.frontend.nn`` models; ``tuning`` holds the measured tile choices per GPU.
"""
