"""Piper voices: a VITS ONNX export (``<voice>.onnx``) next to its config (``<voice>.onnx.json``).

TVM's ONNX importer cannot take these graphs whole (they sample noise with ``RandomNormalLike``,
index with ``NonZero`` masks and have data-dependent shapes), so the network is rebuilt in
``compile/model/vits.py`` and only the weights and hyperparameters are read from the ONNX file:
tensor shapes give the sizes, convolution nodes' attributes give dilations, paddings and strides.
Piper's export drops some parameter names (``onnx::Conv_8168``, and the phoneme embedding comes
out as ``sid``); every weight is therefore named by the node that consumes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from compile.model.vits import ConvSpec, VitsConfig
from compile.sources.base import ModelSource
from ferrum.errors import ModelSourceError
from ferrum.manifest_extra import TtsFrontEnd


def _module_path(node_name: str) -> str:
    """``/flow/flows.0/enc/in_layers.0/Conv`` → ``flow.flows.0.enc.in_layers.0``."""
    return ".".join(node_name.strip("/").split("/")[:-1])


class PiperVoiceSource(ModelSource):
    """One single-speaker Piper voice (espeak phonemes, VITS with ``ResBlock2`` generator)."""

    architecture = "piper-vits"
    format = "onnx"

    def __init__(self, path: Path):
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            raise ModelSourceError("compiling a Piper voice needs the `onnx` package (pip install onnx)") from None
        self.path = Path(path)
        config_path = self.path.with_name(self.path.name + ".json")
        if not config_path.is_file():
            raise ModelSourceError(f"{self.path}: the voice config {config_path.name} is missing")
        self.voice = json.loads(config_path.read_text())
        if self.voice.get("num_speakers", 1) != 1:
            raise ModelSourceError(f"{self.path}: multi-speaker Piper voices are not supported")
        if self.voice.get("phoneme_type", "espeak") != "espeak":
            raise ModelSourceError(f"{self.path}: phoneme type {self.voice['phoneme_type']!r} is not supported")
        graph = onnx.load(str(self.path)).graph
        self._nodes = {n.name: n for n in graph.node}
        self._attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in graph.node}
        raw = {t.name: t for t in graph.initializer}
        self._tensors = {}
        for node in graph.node:
            for slot, name in enumerate(node.input):
                if name in raw and name not in self._tensors.values():
                    self._tensors[self._param_name(node, slot, name)] = name
        self._raw, self._to_array = raw, numpy_helper.to_array
        self._derived = {}
        folded = "/dp/flows.0/Exp_output_0"  # the export constant-folds exp(-logs) of the affine flow
        if "dp.affine.logs" not in self._tensors and folded in raw:
            self._derived["dp.affine.logs"] = lambda: -np.log(self._to_array(raw[folded]).astype(np.float32))
        self.config = self._read_config()
        lang = self.voice.get("language", {}).get("code", "xx").lower().replace("_", "-")
        quality = self.voice.get("audio", {}).get("quality", "")
        self.name = "-".join(p for p in ("piper", lang, self.voice.get("dataset", self.path.stem), quality) if p)

    # -- weights ------------------------------------------------------------------------------
    def _param_name(self, node, slot: int, name: str) -> str:
        """The model's parameter name for initializer ``name`` used as input ``slot`` of ``node``."""
        if node.op_type in ("Conv", "ConvTranspose") and slot in (1, 2):
            torch_name = f"{_module_path(node.name)}.{'weight' if slot == 1 else 'bias'}"
        elif node.op_type == "Gather" and node.name == "/enc_p/emb/Gather":
            torch_name = "enc_p.emb.weight"
        else:
            torch_name = name
        return self._rename(torch_name)

    @staticmethod
    def _rename(name: str) -> str:
        """PyTorch VITS names → ``compile/model/vits.py`` names (flows without their flip layers)."""
        name = re.sub(r"^flow\.flows\.(\d+)\.", lambda m: f"flow.couplings.{int(m.group(1)) // 2}.", name)
        name = re.sub(r"^dp\.flows\.0\.", "dp.affine.", name)
        # duration flows 1,3,5,7 are ConvFlows; inference skips flow 1, so 3,5,7 → 0,1,2
        return re.sub(r"^dp\.flows\.(\d+)\.", lambda m: f"dp.conv_flows.{(int(m.group(1)) - 3) // 2}.", name)

    def tensor_names(self) -> set[str]:
        return set(self._tensors) | set(self._derived)

    def tensor(self, name: str) -> np.ndarray:
        if name in self._derived:
            return self._derived[name]()
        if name not in self._tensors:
            raise ModelSourceError(f"{self.path}: the voice has no tensor for parameter {name}")
        return np.ascontiguousarray(self._to_array(self._raw[self._tensors[name]]).astype(np.float32))

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._raw[self._tensors[name]].dims)

    def _count(self, pattern: str) -> int:
        return sum(1 for n in self._tensors if re.fullmatch(pattern, n))

    def _conv(self, node: str) -> ConvSpec:
        if node not in self._attrs:
            raise ModelSourceError(f"{self.path}: expected graph node {node} is missing")
        a = self._attrs[node]
        rest = (a.get(key, [default])[0] for key, default in (("dilations", 1), ("pads", 0), ("strides", 1)))
        return ConvSpec(a["kernel_shape"][0], *rest)

    # -- hyperparameters ----------------------------------------------------------------------
    def _read_config(self) -> VitsConfig:
        if any(".convs1." in n for n in self._tensors):
            raise ModelSourceError(f"{self.path}: HiFi-GAN ResBlock1 voices (Piper 'high' quality) are not supported")
        try:
            n_vocab, hidden = self._shape("enc_p.emb.weight")
            rel = self._shape("enc_p.encoder.attn_layers.0.emb_rel_k")
            ffn = self._shape("enc_p.encoder.ffn_layers.0.conv_1.weight")
            n_ups = self._count(r"dec\.ups\.\d+\.weight")
            n_blocks = self._count(r"dec\.resblocks\.\d+\.convs\.0\.weight")
            dp_layers = self._count(r"dp\.convs\.convs_sep\.\d+\.weight")
            return VitsConfig(
                n_vocab=n_vocab,
                hidden=hidden,
                filter_channels=ffn[0],
                n_heads=hidden // rel[2],
                n_layers=self._count(r"enc_p\.encoder\.attn_layers\.\d+\.conv_q\.weight"),
                ffn_kernel=ffn[2],
                window=(rel[1] - 1) // 2,
                dp_filter=self._shape("dp.pre.weight")[0],
                dp_dilations=[self._conv(f"/dp/convs/convs_sep.{i}/Conv").dilation for i in range(dp_layers)],
                dp_kernel=self._shape("dp.convs.convs_sep.0.weight")[2],
                n_dp_flows=self._count(r"dp\.conv_flows\.\d+\.pre\.weight"),
                spline_bins=(self._shape("dp.conv_flows.0.proj.weight")[0] + 1) // 3,
                n_flows=self._count(r"flow\.couplings\.\d+\.pre\.weight"),
                wn_layers=self._count(r"flow\.couplings\.0\.enc\.in_layers\.\d+\.weight"),
                wn_kernel=self._shape("flow.couplings.0.enc.in_layers.0.weight")[2],
                wn_dilation_rate=self._conv("/flow/flows.0/enc/in_layers.1/Conv").dilation,
                pre_conv=self._conv("/dec/conv_pre/Conv"),
                post_conv=self._conv("/dec/conv_post/Conv"),
                upsample_initial=self._shape("dec.conv_pre.weight")[0],
                ups=[self._conv(f"/dec/ups.{i}/ConvTranspose") for i in range(n_ups)],
                resblocks=[
                    [self._conv(f"/dec/resblocks.{j}/convs.{k}/Conv")
                     for k in range(self._count(rf"dec\.resblocks\.{j}\.convs\.\d+\.weight"))]
                    for j in range(n_blocks)
                ],
                sample_rate=int(self.voice["audio"]["sample_rate"]),
            )
        except KeyError as exc:
            raise ModelSourceError(f"{self.path}: not a Piper VITS voice ({exc} is missing)") from None

    # -- text front end -----------------------------------------------------------------------
    def front_end(self) -> TtsFrontEnd:
        """What the runtime needs to turn text into phoneme ids and noise (the manifest's ``extra.front_end``)."""
        inference = self.voice.get("inference", {})
        return TtsFrontEnd(
            phonemizer="espeak-ng",
            espeak_voice=self.voice.get("espeak", {}).get("voice", "en-us"),
            phoneme_id_map=self.voice["phoneme_id_map"],
            sample_rate=self.config.sample_rate,
            hop_length=self.config.hop_length,
            noise_scale=float(inference.get("noise_scale", 0.667)),
            length_scale=float(inference.get("length_scale", 1.0)),
            noise_w=float(inference.get("noise_w", 0.8)),
        )

    def describe(self) -> dict[str, str]:
        """Provenance, plus the license line of the voice's ``MODEL_CARD`` when it ships one."""
        info = super().describe()
        card = self.path.with_name("MODEL_CARD")
        if card.is_file():
            licenses = [line.split(":", 1)[1].strip() for line in card.read_text().splitlines() if "License:" in line]
            if licenses:
                info["license"] = ", ".join(licenses)
        return info
