"""Search and visit: relevance, distractors, and error observations for bad calls."""

from mgrpo_ref.tools import ToolConfig, Tools, parse_search_results, tokenize
from mgrpo_ref.world import generate_world

WORLD = generate_world(3)
TOOLS = Tools(WORLD)


def test_exact_name_ranks_first_for_every_entity():
    for e in WORLD.entities:
        results = parse_search_results(TOOLS.search(e.name))
        assert results[0] == (e.doc_id, e.name)


def test_search_returns_top_k_with_distractors():
    k = ToolConfig().top_k
    sizes = [len(parse_search_results(TOOLS.search(p.name))) for p in WORLD.of_kind("person")]
    assert max(sizes) == k and sum(sizes) / len(sizes) > 2  # most searches show distractors
    person = WORLD.of_kind("person")[0]
    results = parse_search_results(TOOLS.search(person.name))
    assert any(title != person.name for _, title in results)
    small = Tools(WORLD, ToolConfig(top_k=2))
    assert len(parse_search_results(small.search(person.name))) == 2


def test_visit_returns_the_document():
    e = WORLD.entities[5]
    assert TOOLS.visit(e.doc_id) == e.text
    assert TOOLS.visit(f"  {e.doc_id} ") == e.text


def test_bad_calls_are_error_observations():
    assert TOOLS.search("") == "error: empty query"
    assert TOOLS.search("   ") == "error: empty query"
    assert TOOLS.search("x" * 101).startswith("error: query longer than 100")
    assert TOOLS.search("zzzz qqqq") == "no results"
    assert TOOLS.search("the of is") == "no results"  # only stopwords
    assert TOOLS.visit("99999") == "error: no document 99999"
    assert TOOLS.visit("Bako Tumar").startswith("error: 'Bako Tumar' is not a document id")
    assert TOOLS.visit("").startswith("error:")
    assert parse_search_results("error: empty query") == []


def test_tokenize():
    assert tokenize("Who is the founder of Velu-Labs?") == ["founder", "velu", "labs"]



def test_an_unknown_document_id_is_echoed_short():
    huge = "7" * 1_000_000
    observation = TOOLS.visit(huge)
    assert len(observation) < 100 and observation.startswith("error: no document 777") and "(1000000 digits)" in observation
    assert TOOLS.visit("9" * 40) == f"error: no document {'9' * 40}"  # up to 40 characters: as it was given
