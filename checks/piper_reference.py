"""An independent reference for Piper voices: the voice's own ONNX graph run by ONNX Runtime.

The graph draws its noise with ``RandomNormalLike``; to compare sample for sample, each such node
is replaced by a slice of a new graph input (``noise_w`` for the duration predictor, ``noise`` for
the prior), so the reference sees exactly the standard-normal draws the engine used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# RandomNormalLike node → (graph input that replaces it, its channel count)
NOISE_INPUTS = {"/dp/RandomNormalLike": ("noise_w", 2), "/RandomNormalLike": ("noise", 192)}


def reference_session(onnx_path: Path):
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    graph.initializer.append(helper.make_tensor("ref_zeros3", TensorProto.INT64, [3], [0, 0, 0]))
    nodes = []
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        name, channels = NOISE_INPUTS[node.name]
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, f"{name}_len"]))
        shape = f"{node.name}_shape"
        nodes.append(helper.make_node("Shape", [node.input[0]], [shape]))
        nodes.append(helper.make_node("Slice", [name, "ref_zeros3", shape], [node.output[0]]))
    del graph.node[:]
    graph.node.extend(nodes)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def reference_audio(session, ids: list[int], noise_w: np.ndarray, noise: np.ndarray, scales: dict) -> np.ndarray:
    """Waveform of one utterance; ``noise_w`` ``[1, 2, n]`` and ``noise`` ``[1, C, frames]`` unscaled."""
    feeds = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array([scales["noise_scale"], scales["length_scale"], scales["noise_w"]], dtype=np.float32),
        "noise_w": noise_w.astype(np.float32),
        "noise": noise.astype(np.float32),
    }
    return session.run(None, feeds)[0].reshape(-1)
