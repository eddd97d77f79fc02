"""A BERT encoder as an ONNX graph, built from a model folder's ``model.safetensors`` with
numpy and ``onnx`` alone: the default model runs without torch ever being installed.

The graph has the signature of transformers' own export (``input_ids``, ``attention_mask``,
``token_type_ids`` in; ``last_hidden_state`` out, batch and tokens dynamic) and computes what
``BertModel`` computes in evaluation mode: word, position and token-type embeddings, then
per layer self-attention and a feed-forward block, each followed by a residual layer norm;
``gelu`` is the exact (erf) one BERT's configuration names. The tests compare it with the
torch export on the check sentences (cosine ≥ 0.9999).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import MemoryConfigurationError

__all__ = ["read_safetensors", "bert_graph", "OPSET"]

OPSET = 17
"""The first opset with ``LayerNormalization``."""

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a ``.safetensors`` file (an 8-byte header length, a JSON header of
    names, dtypes, shapes and byte offsets, then the raw little-endian data)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise MemoryConfigurationError(f"{path}: tensor {name} has dtype {spec['dtype']}")
        start, end = spec["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=dtype).reshape(spec["shape"])
        tensors[name] = array.astype(np.float32) if dtype is np.float16 else array
    return tensors


class _Graph:
    """Nodes and initialisers being gathered, with fresh names for intermediate values."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def constant(self, name: str, value: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, *inputs: str, name: str = "", **attributes: Any) -> str:
        self._count += 1
        output = f"{kind.lower()}_{self._count}"
        node = self.helper.make_node(kind, list(inputs), [output], name=name, **attributes)
        self.nodes.append(node)
        return output

    def linear(self, x: str, weights: dict[str, Any], prefix: str) -> str:
        # torch's Linear keeps weight as (out, in): x @ weight.T + bias. Named by module
        # path as torch.onnx names it ("/encoder/layer.0/output/dense/MatMul"), which the
        # int8 recipe looks for.
        weight = self.constant(f"{prefix}.weight.T", weights[f"{prefix}.weight"].T)
        bias = self.constant(f"{prefix}.bias", weights[f"{prefix}.bias"])
        path = "/" + prefix.replace(".", "/").replace("layer/", "layer.")
        product = self.op("MatMul", x, weight, name=f"{path}/MatMul")
        return self.op("Add", product, bias, name=f"{path}/Add")

    def layer_norm(self, x: str, weights: dict[str, Any], prefix: str, epsilon: float) -> str:
        scale = self.constant(f"{prefix}.weight", weights[f"{prefix}.weight"])
        bias = self.constant(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return self.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=epsilon)


def bert_graph(folder: Path) -> Any:
    """The ONNX model (an ``onnx.ModelProto``) of the BERT encoder in ``folder``
    (``config.json`` and ``model.safetensors``)."""
    from onnx import TensorProto, helper

    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise MemoryConfigurationError(
            f"{folder}: not a BERT model with gelu ({config.get('model_type')}, "
            f"{config.get('hidden_act')}); use PostgresConfig(embedding_backend='torch')"
        )
    weights = read_safetensors(folder / "model.safetensors")
    weights = {name.removeprefix("bert."): array for name, array in weights.items()}
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_size, epsilon = hidden // heads, float(config["layer_norm_eps"])
    g = _Graph()

    # Embeddings: word + position (0..tokens-1) + token type, then a layer norm.
    words = g.op(
        "Gather", g.constant("word", weights["embeddings.word_embeddings.weight"]), "input_ids"
    )
    # The first `tokens` rows of the position table: positions 0..tokens-1.
    tokens = g.op("Shape", "input_ids", start=1, end=2)
    zero = g.constant("zero", np.array([0], dtype=np.int64))
    position_table = g.constant("position", weights["embeddings.position_embeddings.weight"])
    positions = g.op("Slice", position_table, zero, tokens, zero)
    x = g.op(
        "Add",
        g.op(
            "Add",
            words,
            positions,
        ),
        g.op(
            "Gather",
            g.constant("token_type", weights["embeddings.token_type_embeddings.weight"]),
            "token_type_ids",
        ),
    )
    x = g.layer_norm(x, weights, "embeddings.LayerNorm", epsilon)

    # Padding: a large negative added to the scores of masked keys, as BertModel does.
    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    one = g.constant("ones", np.array(1.0, dtype=np.float32))
    masked = g.op(
        "Mul",
        g.op("Sub", one, mask),
        g.constant("lowest", np.array(np.finfo(np.float32).min, dtype=np.float32)),
    )
    mask_axes = g.constant("mask_axes", np.array([1, 2], dtype=np.int64))
    key_mask = g.op("Unsqueeze", masked, mask_axes)  # (batch, 1, 1, tokens)

    split = g.constant("split_heads", np.array([0, 0, heads, head_size], dtype=np.int64))
    merge = g.constant("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
    scale = g.constant("scale", np.array(math.sqrt(head_size), dtype=np.float32))
    half = g.constant("half", np.array(0.5, dtype=np.float32))
    root2 = g.constant("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    for layer in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{layer}"

        # (batch, heads, tokens, head size); the keys transposed for the product.
        by_head = {
            name: g.op(
                "Transpose",
                g.op("Reshape", g.linear(x, weights, f"{p}.attention.self.{name}"), split),
                perm=perm,
            )
            for name, perm in (
                ("query", [0, 2, 1, 3]),
                ("key", [0, 2, 3, 1]),
                ("value", [0, 2, 1, 3]),
            )
        }
        query, key, value = by_head["query"], by_head["key"], by_head["value"]
        scores = g.op("Add", g.op("Div", g.op("MatMul", query, key), scale), key_mask)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), value)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), merge)
        attended = g.linear(context, weights, f"{p}.attention.output.dense")
        x = g.layer_norm(
            g.op("Add", attended, x), weights, f"{p}.attention.output.LayerNorm", epsilon
        )
        inner = g.linear(x, weights, f"{p}.intermediate.dense")
        # gelu(v) = v / 2 * (1 + erf(v / sqrt 2))
        gelu = g.op(
            "Mul",
            g.op("Mul", inner, half),
            g.op("Add", one, g.op("Erf", g.op("Div", inner, root2))),
        )
        out = g.linear(gelu, weights, f"{p}.output.dense")
        x = g.layer_norm(g.op("Add", out, x), weights, f"{p}.output.LayerNorm", epsilon)
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))

    ids = ["batch", "tokens"]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ids)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*ids, hidden])
    graph = helper.make_graph(g.nodes, "bert", inputs, [output], g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
