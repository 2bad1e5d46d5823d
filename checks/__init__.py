"""Independent references and correctness checks shared by ``tests/`` and ``bench/``.

Neither folder imports the other; what both need lives here: the numpy Llama (``reference_llama``),
spoken test sentences and word error rate (``speech``), Piper's own ONNX graph under ONNX Runtime
(``piper_reference``) and the CUDA kernel checks against torch (``cuda_kernels``). Not part of the
runtime distribution.
"""
