"""The predictors and baselines keep scikit-learn's estimator contract: parameters only in __init__, clone
and set_params work, bad parameters are named in one sentence at fit, and grouped folds hold groups out whole."""
import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone, is_regressor
from sklearn.frozen import FrozenEstimator
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from jcw.predictor import PredictorError, baselines, evaluation, pipeline, programs
from jcw.predictor.models import LatencyPredictor
from jcw.predictor.sparse_runtime import SparseProgramModel
from jcw.predictor.transfer import TransferPredictor
from test_program_model import make_specs, synthetic, synthetic_layer_rows

ESTIMATORS = (LatencyPredictor, TransferPredictor, programs.ProgramModel, SparseProgramModel,
              baselines.MacsProportional, baselines.NnMeterForest, baselines.JcwInterpolation, pipeline.PriorAsIs)


@pytest.fixture(scope="module")
def rows():
    return synthetic_layer_rows(n=90, seed=3)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_every_estimator_keeps_the_parameter_contract(cls):
    estimator = cls()
    assert isinstance(estimator, BaseEstimator)
    # scikit-learn's own checks: defaults constructible, __init__ only stores, get/set_params agree.
    check_parameters_default_constructible(cls.__name__, estimator)
    check_no_attributes_set_in_init(cls.__name__, estimator)
    check_get_params_invariance(cls.__name__, estimator)
    check_set_params(cls.__name__, estimator)


def test_clone_keeps_parameters_as_given_and_refits_identically(rows):
    model = LatencyPredictor("hybrid", candidates=["hybrid", "linear"], n_estimators=20, random_state=3)
    copy = clone(model)  # refuses an estimator whose __init__ changes a parameter (the list stays a list)
    assert copy.get_params() == model.get_params() and copy.candidates == ["hybrid", "linear"]
    fitted, refitted = model.fit(rows), copy.fit(rows)
    assert not hasattr(clone(fitted), "kind_")  # a clone is unfitted
    np.testing.assert_array_equal(evaluation.predict_rows(fitted, rows), evaluation.predict_rows(refitted, rows))
    assert 0.0 <= fitted.score(rows) <= 1.0
    assert clone(model).set_params(model="linear").fit(rows).kind_ == "linear"


def test_auto_picks_by_grouped_cross_validation_of_clones(rows):
    model = LatencyPredictor(candidates=("hybrid", "linear"), n_estimators=20).fit(rows)
    assert set(model.cv_scores_) == {"hybrid", "linear"}
    assert model.kind_ == max(model.cv_scores_, key=model.cv_scores_.get)
    assert model.get_params()["model"] == "auto"  # choosing a kind does not touch the parameter


@pytest.mark.parametrize("make, words", [
    (lambda: LatencyPredictor(n_estimators=0), "'n_estimators' must be in [1, 5000], got 0"),
    (lambda: LatencyPredictor(learning_rate="fast"), "'learning_rate' must be a number, got 'fast'"),
    (lambda: LatencyPredictor(candidates="hybrid"), "'candidates' must name some of"),
    (lambda: LatencyPredictor(candidates=("hybrid", "svm")), "'candidates' must name some of"),
    (lambda: LatencyPredictor("svm"), "'model' must be auto or one of"),
    (lambda: baselines.NnMeterForest(n_estimators=-1), "'n_estimators' must be in [1, 5000], got -1"),
    (lambda: baselines.NnMeterForest(random_state=1.5), "'random_state' must be a whole number, got 1.5"),
    (lambda: TransferPredictor(object()), "'prior' must be a loaded prior or a fitted latency predictor"),
    (lambda: pipeline.PriorAsIs(), "'prior' must be a loaded prior"),
])
def test_bad_parameters_are_named_at_fit_not_at_construction(rows, make, words):
    estimator = make()  # constructing never validates: set_params and clone may pass anything through
    with pytest.raises(PredictorError) as caught:
        estimator.fit(rows)
    assert words in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("params, words", [
    ({"kind": "forest"}, "'kind' of the program model must be auto or one of"),
    ({"cv_folds": 1}, "'cv_folds' must be in [2, 20], got 1"),
    ({"min_gain": 2.0}, "'min_gain' must be in [0.0, 1.0], got 2.0"),
    ({"random_state": -1}, "'random_state' must be >= 0, got -1"),
])
def test_program_model_parameters_are_named_at_fit(params, words):
    x, y = synthetic(make_specs(12, seed=5))
    with pytest.raises(PredictorError) as caught:
        programs.ProgramModel(**params).fit(x, y)
    assert words in str(caught.value)


def test_program_models_are_regressors_with_an_r2_score():
    specs = make_specs(40, seed=2)
    x, y = synthetic(specs, noise=0.01, seed=2)
    model = programs.ProgramModel("linear").fit(x, y)
    assert is_regressor(model) and is_regressor(SparseProgramModel())
    assert model.score(x, y) > 0.99  # RegressorMixin: R² of predict(x)


class _FoldSpy(BaseEstimator):
    """Records the shapes each clone trains on and is asked about."""

    log: list = []

    def __init__(self, tag="spy"):
        self.tag = tag

    def fit(self, rows, y=None):
        self.trained_on_ = {evaluation.shape_key(r) for r in rows}
        return self

    def predict_impl(self, columns, impl):
        asked = {(o, int(k), int(a), int(b), int(h)) for o, k, a, b, h in
                 zip(columns["op"], columns["k"], columns["cin"], columns["cout"], columns["h"])}
        _FoldSpy.log.append((self.trained_on_, asked))
        return np.ones(len(columns["op"]))


def test_grouped_cv_holds_every_shape_out_whole_and_tests_it_once(rows):
    _FoldSpy.log = []
    evaluation.grouped_cv_score(_FoldSpy(), rows, folds=4, seed=1)
    tested: dict = {}
    for trained, asked in _FoldSpy.log:
        assert not trained & asked  # no shape on both sides of a fold
        for shape in asked:
            tested.setdefault(shape, set()).add(id(trained))
    assert set(tested) == {evaluation.shape_key(r) for r in rows}
    assert all(len(folds) == 1 for folds in tested.values())  # each shape is tested in one fold only


def test_held_out_splits_are_group_shuffle_splits(rows):
    for seed in range(3):
        train, test = evaluation.grouped_split(rows, 0.25, seed)
        assert len(train) + len(test) == len(rows) and train and test
        assert not {evaluation.shape_key(r) for r in train} & {evaluation.shape_key(r) for r in test}
        shares = len({evaluation.shape_key(r) for r in test}) / len({evaluation.shape_key(r) for r in rows})
        assert 0.2 <= shares <= 0.3
    assert evaluation.grouped_split(rows, 0.25, 0) == evaluation.grouped_split(rows, 0.25, 0)
    assert evaluation.grouped_split(rows, 0.25, 0) != evaluation.grouped_split(rows, 0.25, 1)
    with pytest.raises(PredictorError, match="leaves one side of the split of 1 rows empty"):
        evaluation.random_split(rows[:1], 0.25, 0)


class _ProgramFoldSpy(programs.ProgramModel):
    log: list = []

    def fit(self, x, latency_ms, groups=None):
        self.trained_on_ = {tuple(row) for row in np.asarray(x)}
        return super().fit(x, latency_ms, groups)

    def predict(self, x):
        _ProgramFoldSpy.log.append((self.trained_on_, {tuple(row) for row in np.asarray(x)}))
        return super().predict(x)


def test_program_cross_validation_holds_families_out_whole():
    specs = make_specs(30, seed=4)
    x, y = synthetic(specs, noise=0.01, seed=4)
    families = [s["family"] for s in specs]
    _ProgramFoldSpy.log = []
    scores = programs.cross_validate(_ProgramFoldSpy("linear"), x, y, families, folds=3, seed=0)
    assert scores["grouped_by"] == "family" and scores["n"] == len(y)
    family_of = {tuple(row): family for row, family in zip(x, families)}
    for trained, asked in _ProgramFoldSpy.log:
        assert not {family_of[r] for r in trained} & {family_of[r] for r in asked}
    # Fewer than 3 families: every program is its own group.
    assert programs.cross_validate(programs.ProgramModel("linear"), x, y, ["a"] * len(y))["grouped_by"] == "program"


def test_a_frozen_prior_survives_cloning_the_transfer_predictor(rows):
    prior = LatencyPredictor("linear").fit(rows)
    new_rows = [{**r, "latency_us": 2.0 * r["latency_us"]} for r in rows]
    model = TransferPredictor(FrozenEstimator(prior), "scale")
    fitted = clone(model).fit(new_rows)
    assert fitted.prior.estimator is prior  # frozen: cloned as itself, still fitted
    ratio = evaluation.predict_rows(fitted, rows) / evaluation.predict_rows(prior, rows)
    np.testing.assert_allclose(ratio, 2.0, rtol=0.05)
    state = fitted.state()
    assert "prior" not in state["params"] and state["params"]["strategy"] == "scale"
