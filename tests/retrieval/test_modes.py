"""Search modes make plans (mrl.retrieval.modes); a new mode is one registered function."""

import numpy as np
import pytest

from mrl.retrieval.modes import SEARCH_MODES, SearchSettings, available_modes, check_settings, default_funnel, make_plan
from mrl.retrieval.plan import PlanError, QueryPlan, Rerank, Shortlist

SOURCES = {"size_8": 8, "size_16": 16, "size_64": 64}


def test_default_funnel_doubles_sizes_and_halves_keeps():
    assert default_funnel(16, 200, 2048, 10) == [(32, 100), (64, 50), (128, 25), (256, 12), (512, 10),
                                                 (1024, 10), (2048, 10)]
    assert default_funnel(16, 200, 64, 5) == [(32, 100), (64, 5)]
    assert default_funnel(16, 40, 16, 5) == [(16, 5)]


def test_each_mode_makes_its_plan():
    s = SearchSettings(shortlist_size=16, shortlist_k=200, nprobe=4)
    assert make_plan("adaptive", s, 64, 10) == QueryPlan(
        mode="adaptive", shortlist=Shortlist(source="size_16", k=200, nprobe=4), reranks=(Rerank(64, 10),), k=10)
    assert make_plan("funnel", s, 64, 5).reranks == (Rerank(32, 100), Rerank(64, 5))
    adanns = make_plan("adanns", s, 64, 5)
    assert adanns.shortlist == Shortlist(source="adanns", nprobe=4)
    assert adanns.reranks == (Rerank(16, 200), Rerank(32, 100), Rerank(64, 5))
    assert make_plan("full", s, 64, 7) == QueryPlan(mode="full", shortlist=Shortlist(source="size_64", k=7, nprobe=4),
                                                     k=7)
    # K below k is raised to k; configured funnel keeps are clipped into [k, K]
    assert make_plan("adaptive", SearchSettings(shortlist_k=3), 64, 10).shortlist.k == 10
    configured = SearchSettings(shortlist_k=50, funnel=((32, 80), (None, 2)))
    assert make_plan("funnel", configured, 64, 10).reranks == (Rerank(32, 50), Rerank(64, 10))


def test_available_modes_follow_the_index_sources():
    s = SearchSettings()
    assert available_modes(s, SOURCES, 64, 10) == ["adaptive", "funnel", "full"]
    assert available_modes(s, {**SOURCES, "adanns": 16}, 64, 10) == ["adaptive", "funnel", "adanns", "full"]
    assert available_modes(s, {"size_64": 64}, 64, 10) == ["full"]


@pytest.mark.parametrize("settings, mode, message", [
    (SearchSettings(), "adanns", "set index.adanns_size to build AdANNS cells"),
    (SearchSettings(shortlist_size=32), "adaptive", "index.sizes must include 32"),
    (SearchSettings(rerank_size=128), "adaptive", "serve.search.rerank_size 128 is above d=64"),
    (SearchSettings(funnel=((32, 10), (128, 10))), "funnel", r"serve.search.funnel sizes \[128\] are above d=64"),
    (SearchSettings(funnel=((64, 20), (None, 10))), "adaptive", r"serve.search.funnel at d=64: rerank sizes must .* "
                                                                r"got \[\[64, 20\], \[64, 10\]\]"),
    (SearchSettings(), "fastest", r"serve.mode 'fastest': search mode 'fastest' is not accepted"),
])
def test_settings_that_do_not_fit_the_index_are_refused_by_name(settings, mode, message):
    with pytest.raises(PlanError, match=message):
        check_settings(settings, mode, SOURCES, 64, 10)


def test_unknown_mode_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"search mode 'fastest' is not accepted; choose one of \['adaptive'"):
        make_plan("fastest", SearchSettings(), 64, 10)


@pytest.fixture
def toy_mode():
    """A search mode defined in this test alone: the 8-d index shortlists 2k candidates, one rerank at d."""
    @SEARCH_MODES.register("toy")
    def toy(settings, dim, k):
        return QueryPlan(mode="toy", shortlist=Shortlist(source="size_8", k=2 * k), reranks=(Rerank(dim, k),), k=k)

    yield "toy"
    SEARCH_MODES.unregister("toy")


def test_a_toy_mode_is_one_registered_function(toy_mode, tmp_path):
    """Registering the function is all it takes: the service offers the mode and answers with it."""
    from mrl.artifacts.index import write_index
    from mrl.config import ServeConfig
    from mrl.service.retrieval import RetrievalService

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 64)).astype(np.float32)
    write_index(tmp_path, np.arange(300), np.zeros(300, dtype=np.int64), vectors, [8, 16], "flat", {})
    service = RetrievalService.from_path(str(tmp_path), ServeConfig(mode="toy", default_k=5))
    assert "toy" in service.health()["modes"]
    reply = service.search({"vector": vectors[3].tolist()})
    assert reply["search"] == {"mode": "toy", "shortlist": {"source": "size_8", "k": 10}, "reranks": [[64, 5]],
                               "k": 5}
    assert reply["ids"][0] == 3
