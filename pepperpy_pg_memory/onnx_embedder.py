"""The default model run by onnxruntime: the same vectors as sentence-transformers, with no
torch installed.

On first use the packaged all-MiniLM-L6-v2 weights are turned into an ONNX graph
(:mod:`.bert_graph`, numpy and ``onnx`` only: a few seconds) in the user cache folder,
checked against the model's own vectors of fixed sentences (cosine ≥ 0.9999: recorded for the
packaged weights in ``model_checks.json``, or computed by sentence-transformers when another
model's folder is given and it is installed), and only then published: under a file lock,
written to a temporary name and renamed, so that processes starting together build it once
and never read a half-written file. Later starts load the ``.onnx`` file with onnxruntime and
tokenise with ``tokenizers``.

The ``int8`` variant is the fp32 graph with onnxruntime's transformer fusions applied and its
weights quantised to 8 bits per channel (dynamic quantisation): queries in about half fp32's
time, vectors close to but not the model's, so it is another model for the table's registry.
It is checked against fp32 before it is published: cosine ≥ 0.95 on the check sentences and
the same top three on a fixed retrieval set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import platformdirs

from .errors import MemoryConfigurationError
from .local_models import LocalModelEmbedder, packaged_model_folder, quiet_transformers

__all__ = ["OnnxEmbedder", "export_onnx", "quantize_int8", "MIN_COSINE", "MIN_INT8_COSINE"]

logger = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]

MIN_COSINE = 0.9999
"""How close every check sentence's ONNX vector must be to sentence-transformers'."""

MIN_INT8_COSINE = 0.95
"""How close every check sentence's int8 vector must be to the fp32 export's."""

# A fixed retrieval check for the int8 variant: each question's three nearest memories must be
# the ones fp32 finds.
RETRIEVAL_MEMORIES = [
    "Ana is allergic to peanuts and carries an epinephrine pen",
    "Bruno's flight LH-1423 to Lisbon leaves at 7:40 on Friday",
    "The staging database db-prod-08 was migrated to PostgreSQL 18",
    "Carla prefers oat milk in her morning coffee",
    "Order A-77812 shipped on Monday from the Porto warehouse",
    "The quarterly report is due on the last day of March",
    "Diego is learning to play the cello on weekends",
    "The office Wi-Fi password changes every first Monday",
    "Elena's daughter starts school in September",
    "The team agreed to deploy only on Tuesdays and Thursdays",
    "Fabio runs a half marathon every spring",
    "The printer on the third floor jams with thick paper",
]
RETRIEVAL_QUESTIONS = [
    "What food must Ana avoid?",
    "When does Bruno fly?",
    "Which database was upgraded?",
    "How does Carla take her coffee?",
    "Has order A-77812 been sent?",
    "What does Diego do on weekends?",
    "When are we allowed to deploy?",
    "Which sport does Fabio practise?",
]

# Fixed check sentences: short and long (past the 256-token limit), several scripts, digits.
CHECK_SENTENCES = [
    "Ana is allergic to peanuts",
    "What must I never cook for Ana?",
    "Order A-77812 shipped on Monday from warehouse db-prod-08",
    "Ele prefere café com leite de aveia pela manhã",
    "東京の会議は来週の火曜日に延期されました",
    "the " + "very " * 300 + "long memory that is cut at the model's limit",
    "x",
]


def _fingerprint(folder: Path) -> str:
    """Names an export after the weights it came from (a new model release exports anew)."""
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "modules.json"):
        digest.update((folder / name).read_bytes())
    digest.update(str((folder / "model.safetensors").stat().st_size).encode())
    return digest.hexdigest()[:16]


def default_cache_folder() -> Path:
    return Path(platformdirs.user_cache_dir("pepperpy-pg-memory")) / "onnx"


def _max_length(folder: Path) -> int:
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    return int(config.get("max_seq_length", 256))


def _tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    # As sentence-transformers calls it: pad to the longest text, cut at max_seq_length.
    tokenizer.enable_truncation(max_length=_max_length(folder))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def _pooled(hidden: Any, mask: Any) -> Vector:
    """Mean of the real tokens' vectors, L2-normalised (the model's Pooling and Normalize)."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    mean = summed / counts
    norms = np.clip(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12, None)
    return np.asarray(mean / norms, dtype=np.float32)


def _hidden(session: Any, tokenizer: Any, texts: list[str]) -> tuple[Any, Any]:
    """The model's last layer for ``texts`` (batch × tokens × dimension) and the mask of
    their real tokens."""
    encoded = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": np.asarray([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encoded], dtype=np.int64),
        "token_type_ids": np.asarray([e.type_ids for e in encoded], dtype=np.int64),
    }
    (hidden,) = session.run(["last_hidden_state"], feeds)
    return hidden, feeds["attention_mask"]


def _encode(session: Any, tokenizer: Any, texts: list[str]) -> Vector:
    return _pooled(*_hidden(session, tokenizer, texts))


def _token_vectors(session: Any, tokenizer: Any, texts: list[str]) -> list[Vector]:
    """Each text's contextual token vectors, L2-normalised, without [CLS] and [SEP]."""
    hidden, masks = _hidden(session, tokenizer, texts)
    norms = np.clip(np.linalg.norm(hidden, axis=2, keepdims=True), 1e-12, None)
    hidden = (hidden / norms).astype(np.float32)
    out = []
    for row, mask in zip(hidden, masks, strict=True):
        real = row[mask.astype(bool)]
        out.append(real[1:-1] if len(real) > 2 else real)
    return out


def _session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: a library does not chat on stderr
    return onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


FP32_FILE = "model.built.onnx"
"""The checked fp32 graph's file in the model's cache folder."""

CHECK_VECTORS = Path(__file__).with_name("model_checks.json")
"""The model's own vectors of :data:`CHECK_SENTENCES`, by weights fingerprint (see
:func:`_fingerprint`), recorded from sentence-transformers (the tests compare them again)."""


def _model_vectors(folder: Path) -> Vector | None:
    """The vectors the model in ``folder`` gives :data:`CHECK_SENTENCES`: recorded for the
    packaged weights; otherwise from sentence-transformers if it is installed; else None."""
    recorded = json.loads(CHECK_VECTORS.read_text()).get(_fingerprint(folder))
    if recorded is not None:
        return np.asarray(recorded, dtype=np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    quiet_transformers()
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return np.asarray(
        model.encode(CHECK_SENTENCES, normalize_embeddings=True, convert_to_numpy=True),
        dtype=np.float32,
    )


def export_onnx(folder: Path, target: Path) -> float | None:
    """Build the ONNX graph of the model in ``folder`` at ``target`` (fp32), check it against
    the model's own vectors and publish it; returns the smallest cosine seen (None when
    nothing could be compared: another model's folder, without sentence-transformers).

    Raises:
        MemoryConfigurationError: the model is not a BERT encoder, or the graph does not
            match it.
    """
    import onnx

    from .bert_graph import bert_graph

    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        onnx.save(bert_graph(folder), str(partial))  # a failed save leaves no partial file
        built = _encode(_session(partial), _tokenizer(folder), CHECK_SENTENCES)
        reference = _model_vectors(folder)
        worst = None
        if reference is None:
            logger.warning(
                "%s: no recorded vectors and no sentence-transformers to compare the ONNX "
                "graph with; using it unchecked",
                folder,
            )
        else:
            worst = float(np.min(np.sum(built * reference, axis=1)))
            if worst < MIN_COSINE:
                raise MemoryConfigurationError(
                    f"the ONNX graph of {folder.name} differs from the model (cosine "
                    f"{worst:.5f} < {MIN_COSINE}); use PostgresConfig(embedding_backend='torch')"
                )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return worst


TIE_MARGIN = 0.02
"""Cosines closer than this under fp32 are a tie: int8 may order tied memories either way.
(Quantisation moves a question's cosines by up to 0.03 on the check set.)"""


def same_top3(reference: Vector, candidate: Vector) -> bool:
    """Whether ``candidate``'s scores (questions × memories) find fp32's ``reference`` three
    nearest memories for every question: the same first, and no other memory among the
    three that fp32 does not score within :data:`TIE_MARGIN` of its own third.

    (Without the margin, two unrelated memories tied for third — 0.107 against 0.102 for
    "What food must Ana avoid?" — failed the recipe closest to fp32 on every measure.)
    """
    for wanted, got in zip(reference, candidate, strict=True):
        order, found = np.argsort(-wanted), np.argsort(-got)[:3]
        if found[0] != order[0] or np.min(wanted[found]) < wanted[order[2]] - TIE_MARGIN:
            return False
    return True


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Keep onnxruntime's tools from talking: their named loggers are raised to ERROR, and
    the quantiser's calls to ``logging.warning`` on the root logger are dropped — made with no
    handler installed, such a call would also configure the application's root logger."""
    tools = logging.getLogger("onnxruntime")
    level = tools.level
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    added = not root.handlers
    if added:
        root.addHandler(placeholder)  # so that logging.warning() does not call basicConfig

    def from_onnxruntime(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname

    root.addFilter(from_onnxruntime)
    tools.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tools.setLevel(level)
        root.removeFilter(from_onnxruntime)
        if added:
            root.removeHandler(placeholder)


def _fuse_transformer(source: Path, target: Path, folder: Path) -> None:
    """Write ``source`` with onnxruntime's BERT fusions (attention, layer norms, GELU) as
    single operators, so that quantisation sees whole attention blocks."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((folder / "config.json").read_text())
    fused = optimize_model(
        str(source),
        model_type="bert",
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
    )
    fused.save_model_to_file(str(target))


FEED_FORWARD_OUTPUT = re.compile(r"/encoder/layer\.\d+/output/dense/MatMul$")
"""The name of each encoder layer's feed-forward output projection in our graph (named by
module path as torch.onnx names it; the attention's own output is ``…/attention/output/dense``)."""


def _feed_forward_outputs(model: Path) -> list[str]:
    """The matrix products that the int8 recipe keeps in fp32: each layer's feed-forward
    output projection.

    Its input is the GELU output of the 1536-wide intermediate layer, whose few large
    activations set the one scale that dynamic quantisation gives the whole tensor, leaving
    the rest a handful of levels. Measured over the benchmark's 801 answerable questions in
    length-sorted batches of 32 (fp32 hit@1 0.879): quantising everything gave 0.851, keeping
    the first layer in fp32 0.861, keeping these six 0.876, for 4% of batch throughput.
    An export without such names (another exporter) is quantised whole; the check after
    quantisation still guards it.
    """
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and FEED_FORWARD_OUTPUT.search(node.name)
    ]


def _check_int8(source: Path, candidate: Path, folder: Path) -> tuple[float, bool]:
    """The smallest cosine between ``candidate``'s vectors and fp32's on the check sentences,
    and whether both find the same three nearest memories for every retrieval question
    (:func:`same_top3`)."""
    tokenizer = _tokenizer(folder)
    full, small = _session(source), _session(candidate)
    texts = CHECK_SENTENCES + RETRIEVAL_MEMORIES + RETRIEVAL_QUESTIONS
    reference, quantised = _encode(full, tokenizer, texts), _encode(small, tokenizer, texts)
    worst = float(np.min(np.sum(reference * quantised, axis=1)))
    split = len(CHECK_SENTENCES) + len(RETRIEVAL_MEMORIES)
    memories = slice(len(CHECK_SENTENCES), split)
    agrees = same_top3(
        reference[split:] @ reference[memories].T, quantised[split:] @ quantised[memories].T
    )
    return worst, agrees


def quantize_int8(source: Path, target: Path, folder: Path) -> float:
    """Quantise the checked fp32 export ``source`` to int8 at ``target``, check it against
    fp32 and publish it; returns the smallest cosine seen.

    The recipe: fuse the transformer's operators, then quantise the weights per channel, to
    7 bits (``reduce_range``: full 8-bit weights saturate the int8 multiply-add of CPUs
    without VNNI, and failed the check here), leaving each layer's feed-forward output in fp32
    (see :func:`_feed_forward_outputs`).

    Raises:
        MemoryConfigurationError: the quantised model strays too far from fp32.
    """
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = target.with_name(f".{target.name}.{os.getpid()}.fused")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with _quiet_onnxruntime():
            _fuse_transformer(source, fused, folder)
            quantize_dynamic(
                str(fused),
                str(partial),
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                nodes_to_exclude=_feed_forward_outputs(fused),
                # The fused operators are onnxruntime's own: shape inference cannot type
                # their outputs, which are float.
                extra_options={"DefaultTensorType": TensorProto.FLOAT},
            )
        worst, agrees = _check_int8(source, partial, folder)
        if worst < MIN_INT8_COSINE or not agrees:
            raise MemoryConfigurationError(
                f"the int8 model strays from fp32 (cosine {worst:.4f}, same top 3: {agrees}); "
                "use PostgresConfig(embedding_backend='onnx')"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        fused.unlink(missing_ok=True)
    return worst


class OnnxEmbedder(LocalModelEmbedder):
    """all-MiniLM-L6-v2 (or another sentence-transformers folder of the same Transformer →
    mean Pooling → Normalize shape) on onnxruntime.

    Examples:
        >>> embedder = OnnxEmbedder()
        >>> embedder.dimension
        384
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        cache_folder: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        variant: Literal["fp32", "int8"] = "fp32",
    ) -> None:
        super().__init__()
        if variant not in ("fp32", "int8"):
            raise MemoryConfigurationError(f"unknown ONNX variant {variant!r} (fp32 or int8)")
        self.variant = variant
        self._folder = Path(model) if model is not None else None
        self._cache = Path(cache_folder) if cache_folder is not None else None
        self.batch_size = batch_size
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The model's name; the int8 variant's vectors differ, so it is another name. (Its
        quantisation of the graph built from the weights gives other vectors than that of
        torch's export did, "-int8" until 0.2: hence "-int8-v2".)"""
        base = "all-MiniLM-L6-v2" if self._folder is None else self._folder.name
        return base if self.variant == "fp32" else f"{base}-int8-v2"

    @property
    def folder(self) -> Path:
        return self._folder if self._folder is not None else packaged_model_folder()

    def onnx_path(self) -> Path:
        """Where this model's checked export lives (made on first use)."""
        folder = self.folder
        cache = self._cache if self._cache is not None else default_cache_folder()
        # The file's name says its recipe: a new recipe builds or quantises anew (an export
        # made by torch, "model.onnx", gave the same fp32 vectors but other int8 ones).
        name = FP32_FILE if self.variant == "fp32" else "model.built-fused-int8-ffn-fp32.onnx"
        return cache / f"{folder.name}-{_fingerprint(folder)}" / name

    @property
    def dimension(self) -> int:
        config = json.loads((self.folder / "1_Pooling" / "config.json").read_text())
        return int(config["word_embedding_dimension"])

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._session is None:
                try:
                    import onnxruntime  # noqa: F401
                    import tokenizers  # noqa: F401
                except ImportError as exc:
                    raise MemoryConfigurationError(
                        "the onnx backend needs onnxruntime and tokenizers: pip install "
                        "'pepperpy-pg-memory[embeddings]' (or embedding_backend='torch')"
                    ) from exc
                path = self.onnx_path()
                if not path.is_file():
                    self._export(path)
                self._session = _session(path)
                self._tokenizer = _tokenizer(self.folder)
            return self._session, self._tokenizer

    def _export(self, path: Path) -> None:
        from filelock import FileLock

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Processes starting together: one exports, the others wait and find the file.
            with FileLock(str(path.with_suffix(".lock"))):
                if path.is_file():
                    return
                fp32 = path.with_name(FP32_FILE)
                if path == fp32:
                    self._export_fp32(fp32)
                    return
                if not fp32.is_file():
                    # int8 takes its own lock, then fp32's: fp32 exporters never take int8's.
                    with FileLock(str(fp32.with_suffix(".lock"))):
                        if not fp32.is_file():
                            self._export_fp32(fp32)
                logger.info("Quantising %s to int8 (first use only) ...", self.name)
                started = time.perf_counter()
                worst = quantize_int8(fp32, path, self.folder)
                logger.info(
                    "int8 model ready in %.1fs (%s; smallest cosine to fp32 %.4f).",
                    time.perf_counter() - started,
                    path,
                    worst,
                )
        except OSError as exc:
            raise MemoryConfigurationError(
                f"cannot write the ONNX export to {path.parent} ({exc}): point "
                "OnnxEmbedder(cache_folder=...) or XDG_CACHE_HOME at a writable folder, or "
                "use PostgresConfig(embedding_backend='torch')"
            ) from exc

    def _export_fp32(self, path: Path) -> None:
        logger.info(
            "Preparing the embedding model: building the ONNX graph of %s from its weights "
            "(first use only, a few seconds) ...",
            self.name,
        )
        started = time.perf_counter()
        worst = export_onnx(self.folder, path)
        logger.info(
            "Embedding model ready in %.1fs (%s; smallest cosine to the model %s).",
            time.perf_counter() - started,
            path,
            "not compared" if worst is None else f"{worst:.6f}",
        )

    def token_vectors(self, texts: list[str]) -> list[Vector]:
        """Each text's token vectors (the model's last layer, one unit vector per word
        piece), for late-interaction scoring; blocking (run it in a thread)."""
        session, tokenizer = self._load()
        out: list[Vector] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(_token_vectors(session, tokenizer, texts[start : start + self.batch_size]))
        return out

    def _encode(self, texts: list[str]) -> Vector:
        session, tokenizer = self._load()
        # Sorted by length so that each batch pads little; results go back in order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            out[chosen] = _encode(session, tokenizer, [texts[i] for i in chosen])
        return out
