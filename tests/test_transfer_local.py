"""The residual transfer strategy's local correction (predictor.transfer_local): the kernel average itself, the
cross-validated choice to use it (a departure only nearby measured layers show, none when there is nothing to
correct) and its round trip through a saved predictor, old and damaged files included."""
import hashlib
import json
import random

import numpy as np
import pytest

from jcw import predictor
from jcw.predictor import PredictorError, evaluation, priors
from jcw.predictor.features import as_columns, rows_to_columns
from jcw.predictor.transfer import TransferPredictor
from jcw.predictor.transfer_local import DESIGN, LocalResidual, design
from predictor_profile import small_profile, small_rows  # noqa: F401  (fixtures)
from test_program_model import synthetic_layer_rows
from test_transfer import _ExactPrior, known_device  # noqa: F401  (fixture)


def test_the_correction_is_a_shrunk_kernel_average_of_nearby_residuals_within_one_group():
    width = len(DESIGN)
    points = np.array([[0.0] * width, [0.0] * width, [10.0] * width])
    groups, residuals = np.array(["conv/dense"] * 3), np.array([0.3, 0.1, -1.0])
    local = LocalResidual(width=0.5, shrinkage=0.25).fit(points, groups, residuals, scale=np.ones(width))
    at_measured, far, other_group = local.predict(np.array([[0.0] * width, [5.0] * width, [0.0] * width]),
                                                  np.array(["conv/dense", "conv/dense", "conv/sparse"]))
    assert at_measured == pytest.approx((0.3 + 0.1) / (2 + 0.25), rel=1e-6)  # the far row weighs nothing here
    assert far == pytest.approx(0.0, abs=1e-9)  # beyond every measured layer: the prior and the trees alone
    assert other_group == 0.0  # another operator group's residuals never leak in


def _low_density_build(n, seed):
    """A new build on the same phone: half the prior's latency, and a sparse kernel that is a further 1.6x
    faster at densities up to 10 % (what a microkernel that skips empty blocks would do). Density is in no
    stage of the residual strategy but the local correction's design."""
    rng, prior, rows = random.Random(seed), _ExactPrior(), []
    density = 1.0
    for row in synthetic_layer_rows(n=n, seed=seed):
        if row["impl"] == "dense":  # the sparse row of a layer follows its dense row
            density = rng.choice((0.05, 0.1, 0.3, 0.6, 1.0)) if row["op"] == "conv" else 1.0
        row = {**row, "density": density}
        gain = 1.6 if row["impl"] == "sparse" and density <= 0.1 else 1.0
        rows.append({**row, "latency_us": float(prior.predict_impl(rows_to_columns([row]), row["impl"])[0]) / 2 / gain})
    return rows


def _sparse_share(model, rows):
    sparse = [r for r in rows if r["impl"] == "sparse"]
    error = evaluation.predict_rows(model, sparse) / evaluation.latencies(sparse) - 1.0
    return float(np.mean(np.abs(error) <= 0.10))


def test_cross_validation_adds_the_correction_where_nearby_layers_depart_from_the_rest():
    training, held_out = _low_density_build(240, 1), _low_density_build(120, 2)
    without = TransferPredictor(_ExactPrior(), "residual", local=False).fit(training)
    with_local = TransferPredictor(_ExactPrior(), "residual").fit(training)
    assert without.local_ is None and with_local.local_ is not None
    shares = {"without": _sparse_share(without, held_out), "with": _sparse_share(with_local, held_out)}
    # One factor for the sparse kernel lands between 1x and 1.6x; the neighbours at the same density say which.
    assert shares["with"] >= 0.6 and shares["with"] > shares["without"] + 0.4, shares


def test_no_correction_when_the_base_and_trees_leave_nothing_to_correct():
    training = [{**r, "latency_us": r["latency_us"] / 2} for r in synthetic_layer_rows(n=240, seed=1)]
    model = TransferPredictor(_ExactPrior(), "residual").fit(training)
    assert model.local_ is None  # ties go to no correction: it would only add noise


def _with_local(known_device, rows):  # noqa: F811
    model = TransferPredictor(priors.load_prior(known_device), "residual").fit(rows)
    columns = as_columns(rows_to_columns(rows))
    impl = np.array([r["impl"] for r in rows])
    residual = np.random.default_rng(0).normal(0.0, 0.2, len(rows))
    keys = np.char.add(np.char.add(columns["op"].astype(str), "/"), impl.astype(str))
    model.local_ = LocalResidual(0.5, 0.25).fit(design(columns, impl), keys, residual)
    return model


def _rewrite_state(directory, change):
    state_path, card_path = directory / "model.json", directory / "card.json"
    state, card = json.loads(state_path.read_text()), json.loads(card_path.read_text())
    state_path.write_text(json.dumps(change(state)))
    card["files"]["model.json"] = hashlib.sha256(state_path.read_bytes()).hexdigest()
    card_path.write_text(json.dumps(card))


def test_the_correction_survives_save_and_load_and_older_or_damaged_files_are_handled(
        known_device, small_rows, tmp_path):  # noqa: F811
    training, holdout = small_rows
    model = _with_local(known_device, training)
    columns = as_columns(rows_to_columns(holdout))
    predictor.save(model, tmp_path / "saved", {"runner": {"version": "0.2.0"}})
    loaded = predictor.load(tmp_path / "saved")
    np.testing.assert_allclose(model.predict(columns)["best_ms"], loaded.predict(columns)["best_ms"], rtol=1e-12)
    corrected = model.predict_impl(columns, "dense")
    # Saved before the correction existed: no "local" in its state; it loads and predicts without one.
    _rewrite_state(tmp_path / "saved", lambda state: {k: v for k, v in state.items() if k != "local"})
    older = predictor.load(tmp_path / "saved")
    model.local_ = None
    assert older.model.local_ is None
    np.testing.assert_array_equal(model.predict(columns)["best_ms"], older.predict(columns)["best_ms"])
    assert not np.allclose(corrected, model.predict_impl(columns, "dense"))  # the correction was applied
    # A correction whose rows do not add up is refused in one sentence, as any malformed model file.
    model = _with_local(known_device, training)
    predictor.save(model, tmp_path / "damaged", {"runner": {"version": "0.2.0"}})
    _rewrite_state(tmp_path / "damaged", lambda state: {**state, "local": {**state["local"],
                                                                          "residual": state["local"]["residual"][:-1]}})
    with pytest.raises(PredictorError, match="malformed"):
        predictor.load(tmp_path / "damaged")
