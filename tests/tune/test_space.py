"""Search spaces: Ray Tune's domains, grid expansion, conditional sample_from, bad spaces."""
import random

import pytest

from shoal import tune
from shoal.exceptions import SearchSpaceError
from shoal.tune import space as sp
from shoal.tune.search import FINISHED, BasicVariantGenerator


def draw(dom, n=500, seed=0):
    rng = random.Random(seed)
    return [dom.sample(rng) for _ in range(n)]


def test_float_domains_stay_in_range_and_round_to_q():
    assert all(1 <= v < 2 for v in draw(tune.uniform(1, 2)))
    assert all(abs(v / 0.25 - round(v / 0.25)) < 1e-9 for v in draw(tune.quniform(0, 1, 0.25)))
    logs = draw(tune.loguniform(1e-4, 1e-1))
    assert all(1e-4 <= v <= 1e-1 for v in logs)
    assert sum(v < 1e-3 for v in logs) > 100   # a third of the mass below 1e-3 on a log scale
    assert all(v % 1e-3 < 1e-9 or abs(v % 1e-3 - 1e-3) < 1e-9
               for v in draw(tune.qloguniform(1e-3, 1, 1e-3)))
    normal = draw(tune.randn(5, 0.1))
    assert 4.9 < sum(normal) / len(normal) < 5.1
    assert all(abs(v * 2 - round(v * 2)) < 1e-9 for v in draw(tune.qrandn(0, 3, 0.5)))


def test_integer_domains_follow_ray_bounds():
    assert set(draw(tune.randint(0, 3))) == {0, 1, 2}                # upper excluded
    assert set(draw(tune.qrandint(0, 10, 5))) == {0, 5, 10}          # upper included
    assert all(1 <= v < 1000 for v in draw(tune.lograndint(1, 1000)))
    assert all(isinstance(v, int) for v in draw(tune.lograndint(1, 1000)))
    assert set(draw(tune.choice(["a", "b"]))) == {"a", "b"}


@pytest.mark.parametrize("make, words", [
    (lambda: tune.loguniform(0, 1), "lower must be > 0"),
    (lambda: tune.choice([]), "at least one category"),
    (lambda: tune.uniform(2, 1), "lower must be less than upper"),
    (lambda: tune.grid_search([]), "at least one value"),
    (lambda: tune.quniform(0, 1, 0), "q must be > 0"),
    (lambda: tune.lograndint(0, 10), "lower must be > 0"),
])
def test_invalid_spaces_raise_a_clear_error(make, words):
    with pytest.raises(SearchSpaceError, match=words):
        make()


def test_grid_search_combinations_times_num_samples():
    space = {"a": tune.grid_search([1, 2, 3]), "b": {"c": tune.grid_search(["x", "y"])},
             "lr": tune.uniform(0, 1)}
    g = BasicVariantGenerator(random_state=0)
    g.set_search_properties(None, None, space, num_samples=2)
    configs = []
    while (c := g.suggest(str(len(configs)))) != FINISHED:
        configs.append(c)
    assert len(configs) == 12
    assert sorted({(c["a"], c["b"]["c"]) for c in configs}) == [
        (a, b) for a in (1, 2, 3) for b in ("x", "y")]
    assert all(0 <= c["lr"] < 1 for c in configs)


def test_sample_from_sees_the_resolved_config_in_any_order():
    space = {"double": tune.sample_from(lambda spec: spec.config.model.width * 2),
             "model": {"width": tune.choice([8, 16])},
             "triple": tune.sample_from(lambda spec: spec.config["double"] + spec.config.model.width),
             "fixed": 3, "noarg": tune.sample_from(lambda: 7)}
    cfg = sp.resolve(sp.grid_variants(space)[0], random.Random(1))
    assert cfg["double"] == 2 * cfg["model"]["width"]
    assert cfg["triple"] == 3 * cfg["model"]["width"]
    assert cfg["fixed"] == 3 and cfg["noarg"] == 7


def test_sample_from_cycle_is_an_error():
    space = {"a": tune.sample_from(lambda s: s.config.b), "b": tune.sample_from(lambda s: s.config.a)}
    with pytest.raises(SearchSpaceError, match="depend on each other"):
        sp.resolve(sp.grid_variants(space)[0], random.Random(0))


def test_points_to_evaluate_come_first_and_are_checked():
    g = BasicVariantGenerator(points_to_evaluate=[{"x": 0.5}], random_state=0)
    g.set_search_properties(None, None, {"x": tune.uniform(0, 1), "y": tune.randint(0, 5)}, 3)
    first = g.suggest("0")
    assert first["x"] == 0.5 and 0 <= first["y"] < 5
    bad = BasicVariantGenerator(points_to_evaluate=[{"x": 2.0}])
    with pytest.raises(SearchSpaceError, match="outside its domain"):
        bad.set_search_properties(None, None, {"x": tune.uniform(0, 1)}, 3)


def test_same_seed_same_configs_and_state_round_trip():
    space = {"x": tune.uniform(0, 1), "k": tune.choice(list(range(100)))}
    a, b = BasicVariantGenerator(random_state=3), BasicVariantGenerator(random_state=3)
    for g in (a, b):
        g.set_search_properties(None, None, space, 10)
    assert [a.suggest(str(i)) for i in range(3)] == [b.suggest(str(i)) for i in range(3)]
    c = BasicVariantGenerator()
    c.set_search_properties(None, None, space, 10)
    c.set_state(a.get_state())
    assert c.suggest("3") == a.suggest("3")
