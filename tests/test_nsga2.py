"""The search on pymoo: JCW's survival as a pymoo Survival, the spread first population as a Sampling, genes
snapped to their candidate lists by a Repair, pymoo's HV against hand-checked areas, every `--algorithm`
respecting the genome and the latency range, and reproducibility of a whole search."""
import numpy as np
import pytest
import torch
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.operators.sampling.rnd import IntegerRandomSampling

from jcw.search import zoo
from jcw.search.genome import SearchSpace
from jcw.search.graph import read_model
from jcw.search.jcw_selection import JCWSurvival
from jcw.search.objectives import LatencyModel, ProxyAccuracy, PruningProblem
from jcw.search.pymoo_parts import (
    ALGORITHMS,
    GridRepair,
    PymooPruningProblem,
    SpreadSampling,
    evolve,
    feasible_front,
    hypervolume,
    make_algorithm,
)
from search_standin import MacsPredictor

# Hand-checked: points (latency, -accuracy)
#   0 (1, 5)  1 (2, 3)  2 (3, 1)   -> front 0 (trade-offs)
#   3 (2, 5)  dominated by 0;  4 (3, 3) dominated by 1;  5 (4, 4) dominated by 1 and 4 -> front 2
F = np.array([[1, 5], [2, 3], [3, 1], [2, 5], [3, 3], [4, 4]], dtype=float)


def test_feasible_front_hand_case():
    assert feasible_front(F, np.zeros(6)).tolist() == [0, 1, 2]                 # by rising latency
    assert feasible_front(F, np.array([0, 1.0, 0, 0, 0, 0])).tolist() == [0, 2]      # 1 infeasible: 4 is still
    assert feasible_front(F, np.array([0, 1.0, 1.0, 0, 0, 0])).tolist() == [0, 4]   # dominated by 2
    assert feasible_front(F, np.ones(6)).tolist() == []


def test_hypervolume_hand_case():
    # points (1,3) (2,1) with reference (4,4): 3*1 + 2*2 = 7; a dominated point changes nothing
    assert hypervolume(np.array([[1, 3], [2, 1]]), (4, 4)) == pytest.approx(7.0)
    assert hypervolume(np.array([[1, 3], [2, 1], [3, 3]]), (4, 4)) == pytest.approx(7.0)
    assert hypervolume(np.array([[5, 1]]), (4, 4)) == 0.0
    assert hypervolume(np.empty((0, 2)), (4, 4)) == 0.0


class Grid(Problem):
    def __init__(self, xl, xu, gene_axes=None):
        super().__init__(n_var=len(xl), n_obj=2, xl=np.asarray(xl), xu=np.asarray(xu), vtype=int)
        self.gene_axes = gene_axes if gene_axes is not None else np.zeros(len(xl), dtype=np.int64)


def test_grid_repair_snaps_to_the_nearest_allowed_index():
    problem = Grid([0, 2, 5, 3], [9, 9, 9, 3])
    X = np.array([[0.4, 1.2, 7.5, 3.4], [-3.0, 8.6, 9.7, 2.5], [4.49, 4.51, 6.0, 3.0]])
    repaired = GridRepair().do(problem, Population.new("X", X)).get("X")
    assert repaired.dtype == np.int64
    assert repaired.tolist() == [[0, 2, 8, 3], [0, 9, 9, 3], [4, 5, 6, 3]]


def test_crossover_and_mutation_children_stay_on_the_candidate_lists():
    problem = Grid([0, 2, 5, 3], [9, 9, 9, 3])
    algorithm = make_algorithm("nsga2", 50)
    rng = np.random.default_rng(0)
    parents = Population.new("X", rng.integers(problem.xl, problem.xu + 1, size=(100, 4)))
    children = algorithm.mating.crossover(problem, parents[np.arange(100).reshape(50, 2)], random_state=rng)
    children = algorithm.mating.mutation(problem, children, random_state=rng)
    X = children.get("X")
    assert X.dtype == np.int64 and X.shape == (100, 4)
    assert (X >= problem.xl).all() and (X <= problem.xu).all() and (X[:, 3] == 3).all()
    assert len(np.unique(X, axis=0)) > 50                                   # they do move


def test_mutation_moves_genes_by_whole_steps():
    """PM at eta 3: a mutated gene of ten candidates usually survives the rounding (at pymoo's default eta 20
    about half as many individuals change)."""
    problem = Grid([0] * 8, [9] * 8)
    X = np.random.default_rng(0).integers(0, 10, size=(1000, 8))
    mutated = make_algorithm("nsga2", 16).mating.mutation(problem, Population.new("X", X),
                                                          random_state=np.random.default_rng(1)).get("X")
    assert (mutated != X).any(axis=1).mean() > 0.3


def test_jcw_nsga2_picks_parents_by_rank_then_crowding():
    assert make_algorithm("nsga2").tournament_type == "comp_by_rank_and_crowding"
    assert isinstance(make_algorithm("nsga2").survival, JCWSurvival)
    assert not isinstance(make_algorithm("nsga2-crowding").survival, JCWSurvival)


def test_spread_sampling_covers_more_latency_than_uniform_genes():
    model, shape = zoo.build("resnet18")
    space = SearchSpace(read_model(model, torch.randn(*shape)))
    latency = LatencyModel(MacsPredictor(), space, "sparse")
    problem = PymooPruningProblem(PruningProblem(space, latency, lambda X: np.zeros(len(X))))
    spread = SpreadSampling().do(problem, 64, random_state=np.random.default_rng(0)).get("X")
    uniform = IntegerRandomSampling().do(problem, 64, random_state=np.random.default_rng(0)).get("X")
    assert spread.dtype == np.int64 and (spread >= space.xl).all() and (spread <= space.xu).all()
    assert np.ptp(latency(spread)) > 1.5 * np.ptp(latency(uniform.astype(np.int64)))


def test_spread_sampling_keeps_a_share_of_later_axis_genes_at_their_top():
    problem = Grid(np.zeros(20, dtype=np.int64), np.full(20, 9), np.array([0] * 10 + [1] * 10))
    plain = SpreadSampling().do(problem, 400, random_state=np.random.default_rng(0)).get("X")
    kept = SpreadSampling(keep_share=0.5).do(problem, 400, random_state=np.random.default_rng(0)).get("X")
    top_plain, top_kept = (plain[:, 10:] == 9).mean(), (kept[:, 10:] == 9).mean()
    assert top_kept > top_plain + 0.3                  # about half the density genes start at 1.0
    assert np.array_equal(kept[1:, :10], plain[1:, :10])  # width genes untouched
    assert (kept[0] == 9).all()                          # the unpruned genome is in the first population
    with pytest.raises(ValueError, match="keep_share"):
        SpreadSampling(keep_share=1.0)


def test_jcw_survival_covers_the_latency_range():
    rng = np.random.default_rng(0)
    lat = rng.uniform(0, 100, 400)
    acc = -(1 - np.exp(-lat / 30)) + rng.normal(0, 0.05, 400)
    Fp = np.column_stack([lat, acc])
    keep = JCWSurvival(n_targets=8).select(Fp, 64, np.random.default_rng(1))
    assert len(keep) == 64 and len(set(keep.tolist())) == 64
    counts = np.histogram(lat[keep], bins=8, range=(0, 100))[0]
    assert (counts > 0).all()
    global_front = feasible_front(Fp, np.zeros(400))
    assert set(global_front.tolist()) <= set(keep.tolist())     # small front: all elites survive
    with pytest.raises(ValueError, match="n_targets"):
        JCWSurvival(n_targets=0)


def test_jcw_survival_through_pymoo_ranks_survivors_and_puts_infeasible_last():
    """pymoo hands JCW the feasible individuals; the least infeasible fill the rest; survivors carry the rank
    and crowding NSGA-II's tournament reads."""
    cv = np.array([0, 0, 2.0, 0, 0, 1.0, 0, 0])
    Fx = np.vstack([F, [[1.5, 4.5], [5, 5]]])
    pop = Population.new("X", np.arange(8)[:, None], "F", Fx, "G", cv[:, None])

    class Constrained(Grid):
        def __init__(self):
            super().__init__([0], [7])
            self.n_ieq_constr = 1

    survivors = JCWSurvival(n_targets=2).do(Constrained(), pop, n_survive=7, random_state=np.random.default_rng(0))
    kept = survivors.get("X")[:, 0].tolist()
    assert set(kept[:6]) == {0, 1, 3, 4, 6, 7} and kept[6] == 5      # every feasible one, then CV 1 before CV 2
    ranks = {int(x): r for x, r in zip(survivors.get("X")[:6, 0], survivors[:6].get("rank"))}
    assert ranks[0] == ranks[1] == ranks[6] == 0 and ranks[3] == ranks[4] == 1 and ranks[7] == 2
    crowding = survivors[:6].get("crowding")
    assert np.isinf(crowding[[kept.index(0), kept.index(1)]]).all()   # the front's extremes


@pytest.fixture(scope="module")
def digits_problem():
    model, shape = zoo.build("digits")
    space = SearchSpace(read_model(model, torch.randn(*shape)))
    return space, ProxyAccuracy(model, space)


def _run(space, proxy, seed, algorithm="nsga2", latency_range=None, callback=None, gens=15):
    problem = PruningProblem(space, LatencyModel(MacsPredictor(), space, "sparse"), proxy, latency_range)
    return evolve(make_algorithm(algorithm, 16), problem, gens, seed=seed, callback=callback)


def test_same_seed_same_front(digits_problem):
    space, proxy = digits_problem
    a, b, c = _run(space, proxy, 7), _run(space, proxy, 7), _run(space, proxy, 8)
    assert np.array_equal(a.X[a.front], b.X[b.front]) and np.array_equal(a.F[a.front], b.F[b.front])
    assert not np.array_equal(a.X, c.X)
    assert a.evaluations == 16 * 15 and a.generations == 15


def test_search_improves_on_its_initial_population(digits_problem):
    space, proxy = digits_problem
    full = LatencyModel(MacsPredictor(), space, "sparse")(space.uniform(1, 1)[None])[0]
    history = []
    _run(space, proxy, 0, gens=20, callback=lambda g, r: history.append(
        (g, hypervolume(r.F[r.front], (full, 0.0)))))
    assert [g for g, _ in history] == list(range(1, 21))
    assert history[-1][1] > history[0][1]


def test_every_genome_evaluated_is_on_the_grid_and_new(digits_problem):
    """What the predictor sees: integer genes within bounds, no genome asked twice in one generation."""
    space, proxy = digits_problem
    seen = []
    problem = PruningProblem(space, LatencyModel(MacsPredictor(), space, "sparse"), proxy)
    evaluate = problem.evaluate
    problem.evaluate = lambda X: (seen.append(np.array(X)), evaluate(X))[1]
    evolve(make_algorithm("nsga2", 16), problem, 10, seed=0)
    for X in seen:
        space.check(X)                                             # raises off the grid
        assert len(np.unique(X, axis=0)) == len(X)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_every_algorithm_keeps_the_latency_range(digits_problem, algorithm):
    space, proxy = digits_problem
    latency = LatencyModel(MacsPredictor(), space, "sparse")
    full, smallest = latency(np.array([space.uniform(1, 1), space.xl]))
    limit = 0.5 * (full + smallest)
    result = _run(space, proxy, 0, algorithm, latency_range=(0.0, limit))
    front = result.front
    assert len(front) >= 3 and (result.F[front, 0] <= limit).all() and (result.CV[front] == 0).all()
    assert result.X.dtype == np.int64 and result.evaluations <= 16 * 15


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="algorithm must be one of nsga2, "):
        make_algorithm("agemoea")
