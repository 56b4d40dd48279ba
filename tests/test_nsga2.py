"""NSGA-II parts against hand-checked cases, JCW survival, and reproducibility of a whole search."""
import numpy as np
import pytest
import torch

from search import zoo
from search.genome import SearchSpace
from search.graph import read_model
from search.jcw_selection import JCWSurvival
from search.nsga2 import (
    NSGA2,
    SBX,
    EliminateDuplicates,
    IntegerRandomSampling,
    PolynomialMutation,
    RankAndCrowdingSurvival,
    SpreadSampling,
    constrained_fronts,
    crowding_distance,
    hypervolume_2d,
    non_dominated_sort,
)
from search.objectives import LatencyModel, ProxyAccuracy, PruningProblem
from search_standin import MacsPredictor

# Hand-checked: points (latency, -accuracy)
#   0 (1, 5)  1 (2, 3)  2 (3, 1)   -> front 0 (trade-offs)
#   3 (2, 5)  dominated by 0;  4 (3, 3) dominated by 1;  5 (4, 4) dominated by 1 and 4 -> front 2
F = np.array([[1, 5], [2, 3], [3, 1], [2, 5], [3, 3], [4, 4]], dtype=float)


def test_non_dominated_sort_hand_case():
    fronts = [sorted(f.tolist()) for f in non_dominated_sort(F)]
    assert fronts == [[0, 1, 2], [3, 4], [5]]


def test_equal_points_share_a_front():
    fronts = non_dominated_sort(np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]))
    assert [sorted(f.tolist()) for f in fronts] == [[0, 1], [2]]


def test_crowding_distance_hand_case():
    # front (1,5) (2,3) (3,1) (4,0): ranges 3 and 5; middle points: (3-1)/3 + (5-1)/5, (4-2)/3 + (3-0)/5
    front = np.array([[1, 5], [2, 3], [3, 1], [4, 0]], dtype=float)
    d = crowding_distance(front)
    assert np.isinf(d[0]) and np.isinf(d[3])
    assert d[1] == pytest.approx(2 / 3 + 4 / 5)
    assert d[2] == pytest.approx(2 / 3 + 3 / 5)


def test_constraint_violations_rank_after_feasible():
    cv = np.array([0, 0, 2.0, 0, 0, 1.0])
    fronts = [f.tolist() for f in constrained_fronts(F, cv)]
    assert sorted(fronts[0]) == [0, 1] and fronts[-2:] == [[5], [2]]


def test_hypervolume_hand_case():
    # points (1,3) (2,1) with reference (4,4): 3*1 + 2*2 = 7; a dominated point changes nothing
    assert hypervolume_2d(np.array([[1, 3], [2, 1]]), (4, 4)) == pytest.approx(7.0)
    assert hypervolume_2d(np.array([[1, 3], [2, 1], [3, 3]]), (4, 4)) == pytest.approx(7.0)
    assert hypervolume_2d(np.array([[5, 1]]), (4, 4)) == 0.0


def test_rank_and_crowding_survival_keeps_the_front_and_extremes():
    keep = RankAndCrowdingSurvival()(F, np.zeros(6), 4, np.random.default_rng(0))
    assert set(keep.tolist()) >= {0, 1, 2} and len(keep) == 4


def test_operators_stay_on_the_candidate_lists():
    rng = np.random.default_rng(0)
    xl, xu = np.array([0, 2, 5, 3]), np.array([9, 9, 9, 3])
    a = rng.integers(xl, xu + 1, size=(50, 4))
    b = rng.integers(xl, xu + 1, size=(50, 4))
    children = SBX(prob=1.0)(a, b, xl, xu, rng)
    assert children.dtype == np.int64 and children.shape == (100, 4)
    assert (children >= xl).all() and (children <= xu).all()
    mutated = PolynomialMutation(prob=1.0)(a, xl, xu, rng)
    movable = xu > xl
    assert (mutated[:, movable] != a[:, movable]).all()      # a mutated gene always moves a step
    assert (mutated[:, ~movable] == 3).all()
    assert (mutated >= xl).all() and (mutated <= xu).all()


def test_duplicate_elimination():
    X = np.array([[1, 2], [1, 2], [3, 4], [5, 6]])
    keep = EliminateDuplicates()(X, existing=np.array([[5, 6]]))
    assert keep.tolist() == [True, False, True, False]


def test_spread_sampling_covers_more_latency_than_uniform_genes():
    model, shape = zoo.build("resnet18")
    space = SearchSpace(read_model(model, torch.randn(*shape)))
    latency = LatencyModel(MacsPredictor(), space, "sparse")
    problem = PruningProblem(space, latency, lambda X: np.zeros(len(X)))
    rng = np.random.default_rng(0)
    spread = np.ptp(latency(SpreadSampling()(problem, 64, rng)))
    uniform = np.ptp(latency(IntegerRandomSampling()(problem, 64, rng)))
    assert spread > 1.5 * uniform


def test_jcw_survival_covers_the_latency_range():
    rng = np.random.default_rng(0)
    lat = rng.uniform(0, 100, 400)
    acc = -(1 - np.exp(-lat / 30)) + rng.normal(0, 0.05, 400)
    Fp = np.column_stack([lat, acc])
    keep = JCWSurvival(n_targets=8)(Fp, np.zeros(400), 64, np.random.default_rng(1))
    assert len(keep) == 64 and len(set(keep.tolist())) == 64
    counts = np.histogram(lat[keep], bins=8, range=(0, 100))[0]
    assert (counts > 0).all()
    global_front = non_dominated_sort(Fp)[0]
    assert set(global_front.tolist()) <= set(keep.tolist())     # small front: all elites survive


@pytest.fixture(scope="module")
def digits_problem():
    model, shape = zoo.build("digits")
    space = SearchSpace(read_model(model, torch.randn(*shape)))
    return space, ProxyAccuracy(model, space)


def _run(space, proxy, seed, survival=None):
    problem = PruningProblem(space, LatencyModel(MacsPredictor(), space, "sparse"), proxy)
    return NSGA2(16, survival=survival or JCWSurvival()).run(problem, 15, seed=seed)


def test_same_seed_same_front(digits_problem):
    space, proxy = digits_problem
    a, b, c = _run(space, proxy, 7), _run(space, proxy, 7), _run(space, proxy, 8)
    assert np.array_equal(a.X[a.front], b.X[b.front]) and np.array_equal(a.F[a.front], b.F[b.front])
    assert not np.array_equal(a.X, c.X)
    assert a.evaluations == 16 * 15


def test_search_improves_on_its_initial_population(digits_problem):
    space, proxy = digits_problem
    history = []
    problem = PruningProblem(space, LatencyModel(MacsPredictor(), space, "sparse"), proxy)
    NSGA2(16, survival=JCWSurvival()).run(problem, 20, seed=0, callback=lambda g, r: history.append(
        hypervolume_2d(r.F[r.front], (r.F[:, 0].max() * 2, 0.0))))
    assert history[-1] > history[0]


def test_latency_budget_constraint(digits_problem):
    space, proxy = digits_problem
    latency = LatencyModel(MacsPredictor(), space, "sparse")
    full, smallest = latency(np.array([space.uniform(1, 1), space.xl]))
    limit = 0.5 * (full + smallest)
    problem = PruningProblem(space, latency, proxy, latency_range=(0.0, limit))
    result = NSGA2(16, survival=JCWSurvival()).run(problem, 15, seed=0)
    assert len(result.front) and (result.F[result.front, 0] <= limit).all()
    assert (result.CV[result.front] == 0).all()


def test_spread_sampling_keeps_a_share_of_later_axis_genes_at_their_top():
    class P:
        n_var, xl, xu = 20, np.zeros(20, dtype=np.int64), np.full(20, 9)
        gene_axes = np.array([0] * 10 + [1] * 10)

    rng = np.random.default_rng(0)
    plain = SpreadSampling()(P, 400, rng)
    kept = SpreadSampling(keep_share=0.5)(P, 400, np.random.default_rng(0))
    top_plain, top_kept = (plain[:, 10:] == 9).mean(), (kept[:, 10:] == 9).mean()
    assert top_kept > top_plain + 0.3                  # about half the density genes start at 1.0
    assert np.array_equal(kept[1:, :10], plain[1:, :10])  # width genes untouched
    assert (kept[0] == 9).all()                          # the unpruned genome is in the first population
    with pytest.raises(ValueError, match="keep_share"):
        SpreadSampling(keep_share=1.0)
