"""Ferrum: a compiled-ahead-of-time LLM runtime on Apache TVM.

``ferrum`` holds the contracts (engine traits, request/response and metrics types, the artifact
manifest) that the compile stage (``compile``) and the runtime (``runtime``) agree on.
"""

__version__ = "0.1.0"
