"""The default backend: the packaged model's ONNX graph built once from its weights, checked,
then run by onnxruntime — the same vectors as sentence-transformers, with no torch at all."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pepperpy_pg_memory import (
    MemoryConfigurationError,
    OnnxEmbedder,
    PostgresConfig,
    PostgresStorage,
    SentenceTransformerEmbedder,
)

pytestmark = pytest.mark.model

SENTENCES = [
    "Bruno works as a database administrator in Lisbon.",
    "which nuts are dangerous for Ana?",
    "Ticket KX-221 was escalated to the on-call engineer",
    "Refunds are possible within thirty days with a receipt.",
    "Les réunions du lundi sont annulées jusqu'à nouvel ordre",
    "",
]


_EXPORT_MESSAGES: list[str] = []


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding a checked export, made once for this module (what it said
    while exporting is kept in ``_EXPORT_MESSAGES``)."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    announcer = logging.getLogger("pepperpy_pg_memory.onnx_embedder")

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            _EXPORT_MESSAGES.append(record.getMessage())

    keep, level = Keep(), announcer.level
    announcer.addHandler(keep)
    announcer.setLevel(logging.INFO)
    try:
        asyncio.run(OnnxEmbedder(cache_folder=cache).embed_query("warm up"))
    finally:
        announcer.removeHandler(keep)
        announcer.setLevel(level)
    return cache


def test_the_first_use_says_it_prepares_the_model_and_how_long_it_took(exported: Path) -> None:
    assert _EXPORT_MESSAGES[0].startswith("Preparing the embedding model: building the ONNX")
    assert re.match(r"Embedding model ready in \d+\.\ds ", _EXPORT_MESSAGES[-1])
    # The CLI and the demo show these lines on stderr (cli._announce_model_preparation).
    from pepperpy_pg_memory import cli

    announcer = logging.getLogger("pepperpy_pg_memory.onnx_embedder")
    saved = (announcer.level, announcer.propagate, list(announcer.handlers))
    try:
        cli._announce_model_preparation()
        assert announcer.isEnabledFor(logging.INFO) and not announcer.propagate
    finally:
        announcer.setLevel(saved[0])
        announcer.propagate = saved[1]
        announcer.handlers[:] = saved[2]


async def test_onnx_vectors_are_the_models(exported: Path, minilm: Any) -> None:
    onnx = OnnxEmbedder(cache_folder=exported)
    assert onnx.dimension == 384 and onnx.onnx_path().is_file()
    ours = np.asarray(await onnx.embed_documents(SENTENCES))
    reference = np.asarray(await minilm.embed_documents(SENTENCES))
    assert np.min(np.sum(ours * reference, axis=1)) >= 0.9999
    single = np.asarray(await onnx.embed_query(SENTENCES[2]))
    assert np.allclose(single, ours[2], atol=1e-5)  # batching and padding change nothing


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600
    )


def test_later_starts_do_not_import_torch(exported: Path) -> None:
    done = _run(
        f"""
        import asyncio, sys
        from pepperpy_pg_memory import OnnxEmbedder
        vector = asyncio.run(OnnxEmbedder(cache_folder={str(exported)!r}).embed_query("hi"))
        assert vector.shape == (384,)
        print("torch" in sys.modules, "sentence_transformers" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    assert done.stderr == ""


def test_the_first_use_builds_the_model_where_torch_cannot_be_imported(tmp_path: Path) -> None:
    # A machine that installed the library and the weights only: importing torch,
    # transformers or sentence-transformers fails there.
    done = _run(
        f"""
        import asyncio, sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "sentence_transformers"):
                    raise ImportError(f"{{name}} is not installed")
        sys.meta_path.insert(0, NoTorch())
        from pepperpy_pg_memory import OnnxEmbedder
        embedder = OnnxEmbedder(cache_folder={str(tmp_path)!r})
        vectors = asyncio.run(embedder.embed_documents(["Ana likes tea", "Bruno likes tea"]))
        print(vectors.shape, round(float(vectors[0] @ vectors[1]), 2) > 0.3)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(2,", "384)", "True"]
    assert len(list(tmp_path.rglob("model.built.onnx"))) == 1


def test_the_built_graph_is_the_torch_export(tmp_path: Path) -> None:
    # What transformers' own exporter makes of the model, the reference the builder follows.
    import torch
    from transformers import AutoModel

    from pepperpy_pg_memory.local_models import packaged_model_folder
    from pepperpy_pg_memory.onnx_embedder import _encode, _session, _tokenizer, export_onnx

    folder = packaged_model_folder()

    class Encoder(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = _tokenizer(folder)
    sample = tokenizer.encode_batch(["an example", "another, longer example sentence"])
    inputs = tuple(
        torch.tensor([getattr(e, name) for e in sample], dtype=torch.int64)
        for name in ("ids", "attention_mask", "type_ids")
    )
    axes = {0: "batch", 1: "tokens"}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on transformers' code
        torch.onnx.export(
            Encoder(model), inputs, str(tmp_path / "torch.onnx"),
            input_names=names, output_names=["last_hidden_state"],
            dynamic_axes={name: axes for name in [*names, "last_hidden_state"]},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    worst = export_onnx(folder, tmp_path / "built.onnx")
    assert worst is not None and worst >= 0.9999  # against the recorded vectors
    texts = [*SENTENCES, "the " + "very " * 300 + "long one", "x"]
    exported = _encode(_session(tmp_path / "torch.onnx"), tokenizer, texts)
    built = _encode(_session(tmp_path / "built.onnx"), tokenizer, texts)
    assert np.min(np.sum(exported * built, axis=1)) >= 0.9999


async def test_the_recorded_check_vectors_are_the_models(minilm: Any) -> None:
    import json

    from pepperpy_pg_memory.local_models import packaged_model_folder
    from pepperpy_pg_memory.onnx_embedder import CHECK_SENTENCES, CHECK_VECTORS, _fingerprint

    recorded = json.loads(CHECK_VECTORS.read_text())[_fingerprint(packaged_model_folder())]
    reference = np.asarray(await minilm.embed_documents(CHECK_SENTENCES))
    assert np.min(np.sum(np.asarray(recorded) * reference, axis=1)) >= 0.99999


def test_a_model_that_is_not_bert_is_refused(tmp_path: Path) -> None:
    from pepperpy_pg_memory.bert_graph import bert_graph

    (tmp_path / "config.json").write_text('{"model_type": "roberta", "hidden_act": "gelu"}')
    with pytest.raises(MemoryConfigurationError, match="not a BERT model"):
        bert_graph(tmp_path)


def test_processes_starting_together_export_once(tmp_path: Path) -> None:
    code = f"""
        import asyncio
        from pepperpy_pg_memory import OnnxEmbedder
        asyncio.run(OnnxEmbedder(cache_folder={str(tmp_path)!r}).embed_query("hi"))
        """
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [process.communicate(timeout=600) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in results]
    models = list(tmp_path.rglob("*.onnx"))
    assert len(models) == 1
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and "partial" in p.name]
    assert leftovers == []


def test_the_store_uses_the_configured_backend() -> None:
    assert isinstance(PostgresStorage(PostgresConfig()).embedder, OnnxEmbedder)
    torch_config = PostgresConfig(embedding_backend="torch")
    assert isinstance(PostgresStorage(torch_config).embedder, SentenceTransformerEmbedder)


def test_an_unwritable_cache_is_a_configuration_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("a file where the cache folder would go")
    embedder = OnnxEmbedder(cache_folder=blocked / "onnx")
    with pytest.raises(MemoryConfigurationError, match="cannot write the ONNX export"):
        asyncio.run(embedder.embed_query("hi"))


def test_the_int8_variant_is_checked_close_and_another_model(exported: Path) -> None:
    from pepperpy_pg_memory.embeddings import embedder_identity
    from pepperpy_pg_memory.onnx_embedder import RETRIEVAL_MEMORIES, RETRIEVAL_QUESTIONS

    int8 = OnnxEmbedder(cache_folder=exported, variant="int8")
    fp32 = OnnxEmbedder(cache_folder=exported)
    assert int8.onnx_path() != fp32.onnx_path()
    root = logging.getLogger()
    handlers, filters = list(root.handlers), list(root.filters)
    small = np.asarray(asyncio.run(int8.embed_documents(SENTENCES)))
    # Quantising left the application's logging as it was (onnxruntime's quantiser logs on
    # the root logger, which with no handler would configure it).
    assert root.handlers == handlers and root.filters == filters
    assert logging.getLogger("onnxruntime").level == logging.NOTSET
    assert int8.onnx_path().is_file()
    assert not list(int8.onnx_path().parent.glob(".*.fused"))  # the fused step is cleaned up
    assert int8.onnx_path().stat().st_size < fp32.onnx_path().stat().st_size / 2
    # Each layer's feed-forward output projection stays fp32 (its input's outliers would
    # set the quantisation scale); the other weight products are quantised.
    import onnx

    from pepperpy_pg_memory.onnx_embedder import FEED_FORWARD_OUTPUT

    nodes = onnx.load(str(int8.onnx_path())).graph.node
    kept = [n for n in nodes if FEED_FORWARD_OUTPUT.search(n.name)]
    assert len(kept) == 6 and {n.op_type for n in kept} == {"MatMul"}
    quantised = [n for n in nodes if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert len(quantised) == 6 * 5  # query, key, value, attention output, intermediate
    full = np.asarray(asyncio.run(fp32.embed_documents(SENTENCES)))
    assert np.min(np.sum(small * full, axis=1)) >= 0.95
    assert not np.allclose(small, full, atol=1e-4)  # close, not the same vectors
    # Its nearest memories are fp32's on the published check set.
    memories = np.asarray(asyncio.run(int8.embed_documents(RETRIEVAL_MEMORIES)))
    questions = np.asarray(asyncio.run(int8.embed_documents(RETRIEVAL_QUESTIONS)))
    assert [int(i) for i in np.argmax(questions @ memories.T, axis=1)] == [0, 1, 2, 3, 4, 6, 9, 10]
    # So a table built with one refuses the other (see test_embedder_identity.py).
    assert embedder_identity(int8, 384) == "all-MiniLM-L6-v2-int8-v2/384"
    assert embedder_identity(fp32, 384) == embedder_identity(SentenceTransformerEmbedder(), 384)
    config = PostgresConfig(embedding_backend="onnx-int8")
    assert PostgresStorage(config).embedder.name == "all-MiniLM-L6-v2-int8-v2"  # type: ignore[attr-defined]
    with pytest.raises(MemoryConfigurationError):
        OnnxEmbedder(variant="int4")  # type: ignore[arg-type]


def test_the_int8_variant_loads_without_torch(exported: Path) -> None:
    asyncio.run(OnnxEmbedder(cache_folder=exported, variant="int8").embed_query("warm"))
    done = _run(
        f"""
        import asyncio, sys
        from pepperpy_pg_memory import OnnxEmbedder
        embedder = OnnxEmbedder(cache_folder={str(exported)!r}, variant="int8")
        print(asyncio.run(embedder.embed_query("hi")).shape, "torch" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(384,)", "False"]


def test_the_int8_check_forgives_ties_and_nothing_else() -> None:
    from pepperpy_pg_memory.onnx_embedder import same_top3

    fp32 = np.array([[0.49, 0.31, 0.107, 0.1016, 0.02]])
    assert same_top3(fp32, fp32)
    # Third place between two memories fp32 scores 0.005 apart (under TIE_MARGIN): a tie,
    # either order passes.
    assert same_top3(fp32, np.array([[0.45, 0.31, 0.094, 0.119, 0.02]]))
    # A memory fp32 ranks well below its third does not.
    assert not same_top3(fp32, np.array([[0.45, 0.31, 0.05, 0.04, 0.2]]))
    # Nor does another first, however close.
    assert not same_top3(fp32, np.array([[0.30, 0.31, 0.107, 0.1016, 0.02]]))
