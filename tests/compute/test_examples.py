"""The example pipelines: MiniLM embeddings equal the hub's search vectors; both examples served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from node.compute.client import open_session
from node.compute.examples.csvstats import column_stats
from node.compute.examples.embed import embed
from projections.search.embedding import TOKENIZER_PATH, Embedder
from tests.compute.world import CSV, EMBED, Node, World

TEXTS = ["hospital admissions by ward, 2019-2023", "weather", "", "a much longer text " * 80]


def test_the_example_embeds_exactly_as_the_hub_s_search() -> None:
    out = embed({"texts": TEXTS})
    reference = Embedder().embed(TEXTS)
    assert out["dim"] == 384 and out["model"] == Embedder.model_id
    np.testing.assert_allclose(np.asarray(out["vectors"]), reference, atol=1e-6)
    tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)
    assert out["tokens"] == sum(len(e.ids) for e in tokenizer.encode_batch(TEXTS))  # what the model read


def test_column_statistics() -> None:
    stats = column_stats({"csv": "age,city\n31,Oslo\n45,\n27,Oslo\n"})
    age, city = stats["columns"]
    assert stats["rows"] == 3 and (age["numeric"], age["min"], age["max"], age["mean"]) == (True, 27.0, 45.0, 103 / 3)
    assert (city["numeric"], city["empty"], city["distinct"]) == (False, 1, 1)


@pytest.mark.slow
def test_both_examples_served_and_metered(tmp_path: Path) -> None:
    world = World(tmp_path, embed=True)
    node = Node(world)
    try:
        token = world.token(listing=EMBED, unit="tokens", price=1, budget=100_000, max_call_units=16384)
        with open_session(token, world.buyer_key, world.hub_keys, seller=node.address) as session:
            result = session.invoke({"texts": TEXTS[:2]})
            session.close()
        vectors = np.asarray(result.output["vectors"], dtype=np.float32)
        np.testing.assert_allclose(vectors, Embedder().embed(TEXTS[:2]), atol=1e-6)
        assert result.units == result.output["tokens"] > 0 and result.amount_minor == result.units
        token = world.token(listing=CSV, unit="rows", price=5, max_call_units=10**6, budget=10**8)
        with open_session(token, world.buyer_key, world.hub_keys, seller=node.address) as session:
            stats = session.invoke({"csv": "x\n1\n2\n"})
            session.close()
        assert (stats.output["rows"], stats.units, stats.amount_minor) == (2, 2, 10)
    finally:
        node.stop()
