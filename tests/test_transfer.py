"""Transfer from a known device (issue 11): a prior round trip (train with a prior, save, load, predict, the
card naming the prior's hash), refused missing, foreign and tampered priors, the closest of several priors,
and the transfer plan of `jcw profile --prior`. The new device is the small real profile of
predictor_profile.py; the known devices are predictors trained on its rows made slower by known factors."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from jcw import predictor
from jcw.__main__ import main
from jcw.predictor import LatencyPredictor, PredictorError, evaluation, priors
from jcw.predictor.features import as_columns, rows_to_columns
from jcw.predictor.transfer import GROUPS, STRATEGIES, TransferPredictor, thread_pool_dispatches
from jcw.profiler import plans
from jcw.profiler.store import ProfileStore
from jcw.profiler.transfer_prior import predictor_sha256
from predictor_profile import FAST, small_profile, small_rows  # noqa: F401  (fixtures)
from test_program_model import fake_layer_ms, synthetic_layer_rows

#: The known device: dense 1.8x and sparse 1.3x slower than the new one, so the factor depends on the operator.
FACTORS = {"dense": 1.8, "sparse": 1.3}


def _slower(rows, factors, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return [{**r, "latency_us": r["latency_us"] * factors[r["impl"]] * float(np.exp(noise * rng.standard_normal()))}
            for r in rows]


def _save_prior(rows, directory, runner_version="0.2.0"):
    model = LatencyPredictor("hybrid").fit(rows)
    predictor.save(model, directory, {"runner": {"version": runner_version}, "device_address": "known-phone",
                                      "threads": 1})
    return directory


@pytest.fixture(scope="module")
def known_device(small_rows, tmp_path_factory):
    return _save_prior(_slower(small_rows[0], FACTORS), tmp_path_factory.mktemp("known") / "predictor")


@pytest.fixture(scope="module")
def transferred(small_profile, known_device, tmp_path_factory):
    """`jcw train --prior` on the small profile: (directory, exit status)."""
    out = tmp_path_factory.mktemp("transferred") / "predictor"
    status = main(["train", "--profile", str(small_profile), "--prior", str(known_device), "--out", str(out)])
    return out, status


@pytest.fixture
def prior_copy(known_device, tmp_path):
    target = tmp_path / "prior"
    shutil.copytree(known_device, target)
    return target


def _holdout_error(model, holdout):
    return float(np.median(np.abs(evaluation.predict_rows(model, holdout) / evaluation.latencies(holdout) - 1.0)))


def test_a_prior_round_trip_names_its_hash_and_predicts_as_trained(transferred, known_device, small_rows):
    out, status = transferred
    assert status == 0
    card = json.loads((out / "card.json").read_text())
    expected = priors.prior_sha256(known_device)
    assert card["model"] == "transfer" and card["prior"]["sha256"] == expected == predictor_sha256(known_device)
    assert card["prior"]["device_address"] == "known-phone" and card["prior"]["strategy"] in STRATEGIES
    loaded = predictor.load(out)
    assert loaded.model.prior.sha256 == expected
    # The same fit in memory predicts what the saved one does: nothing is lost on the way through the files.
    training, holdout = small_rows
    fitted = TransferPredictor(priors.load_prior(known_device), card["prior"]["strategy"]).fit(training)
    columns = as_columns(rows_to_columns(training + holdout))
    np.testing.assert_allclose(loaded.predict(columns)["best_ms"], fitted.predict(columns)["best_ms"], rtol=1e-9)
    # It learned the new device: far closer on the held-out layers than the 1.3-1.8x slower prior as it is.
    assert _holdout_error(loaded.model, holdout) < 0.5 * _holdout_error(loaded.model.prior.loaded.model, holdout)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_survives_save_and_load(strategy, known_device, small_rows, tmp_path):
    training, holdout = small_rows
    model = TransferPredictor(priors.load_prior(known_device), strategy).fit(training)
    predictor.save(model, tmp_path / strategy, {"runner": {"version": "0.2.0"}})
    loaded = predictor.load(tmp_path / strategy)
    columns = as_columns(rows_to_columns(holdout))
    np.testing.assert_array_equal(model.predict(columns)["best_ms"], loaded.predict(columns)["best_ms"])
    assert loaded.card["prior"]["sha256"] == priors.prior_sha256(known_device)


def _wide_dense_slower(rows, factor=1.3):
    """A new build whose dense convolutions are `factor` slower from 32 output channels on, the rest as before:
    a factor that depends on the channels within one operator group, which no per-operator line expresses."""
    return [{**r, "latency_us": r["latency_us"] * (factor if r["op"] == "conv" and r["impl"] == "dense"
                                                   and r["cout"] >= 32 else 1.0)} for r in rows]


class _ExactPrior:
    """A known device predicted without error (the law synthetic_layer_rows measures), so only the build
    difference is left to learn."""

    def predict_impl(self, columns, impl, phys=None):
        return 1000 * fake_layer_ms(columns) * (1.5 if impl == "sparse" else 1.0)


def test_residual_trees_learn_a_channel_dependent_factor_within_each_operator_group():
    training = _wide_dense_slower(synthetic_layer_rows(n=240, seed=1))
    held_out = _wide_dense_slower(synthetic_layer_rows(n=120, seed=2))
    shares = {}
    for strategy in ("scale", "residual"):
        model = TransferPredictor(_ExactPrior(), strategy).fit(training)
        error = evaluation.predict_rows(model, held_out) / evaluation.latencies(held_out) - 1.0
        shares[strategy] = float(np.mean(np.abs(error) <= 0.10))
    # One line per operator lands between 1.0 and 1.3 for dense convolutions; the trees split on the channels.
    assert shares["residual"] >= 0.95 and shares["residual"] > shares["scale"] + 0.15, shares
    assert model.tree_weight_ > 0 and "conv/dense" in model.estimator_ and set(model.estimator_) <= set(GROUPS)


def _second_thread(rows, fixed_us=4.0):
    """The same device on two threads: the work halves, each thread-pool dispatch costs `fixed_us` (the sparse
    kernel's im2col gather is a dispatch of its own), so small layers gain little and large ones twice."""
    prior = _ExactPrior()
    out = []
    for r in rows:
        columns = rows_to_columns([r])
        dispatches = thread_pool_dispatches(columns, r["impl"])[0]
        out.append({**r, "latency_us": float(prior.predict_impl(columns, r["impl"])[0]) / 2 + fixed_us * dispatches})
    return out


def test_residual_base_learns_a_second_threads_halved_work_and_fixed_cost_per_dispatch():
    training = _second_thread(synthetic_layer_rows(n=240, seed=1))
    held_out = _second_thread(synthetic_layer_rows(n=120, seed=2))
    assert any(r["impl"] == "sparse" and r["k"] == 3 for r in training)  # two dispatches occur
    shares, models = {}, {}
    for strategy in ("scale", "residual"):
        models[strategy] = TransferPredictor(_ExactPrior(), strategy).fit(training)
        error = evaluation.predict_rows(models[strategy], held_out) / evaluation.latencies(held_out) - 1.0
        shares[strategy] = float(np.mean(np.abs(error) <= 0.05))
    # A line in log space bends one way for the whole group; the affine base is the law itself.
    assert shares["residual"] >= 0.95 and shares["residual"] > shares["scale"] + 0.15, shares
    a, b = models["residual"].affine_["conv/sparse"]
    assert a == pytest.approx(0.5, rel=0.05) and b == pytest.approx(4.0, rel=0.1)


def test_a_residual_predictor_saved_with_a_log_space_base_still_loads_and_predicts_as_saved(
        known_device, small_rows, tmp_path):
    training, holdout = small_rows
    model = TransferPredictor(priors.load_prior(known_device), "residual").fit(_wide_dense_slower(training))
    assert model.affine_ is not None and model.tree_weight_ > 0  # what the saved file would say differently
    predictor.save(model, tmp_path / "saved", {"runner": {"version": "0.2.0"}})
    # As jcw saved it before the residual base could be affine: no "affine" in its state, the line's base.
    state_path, card_path = tmp_path / "saved" / "model.json", tmp_path / "saved" / "card.json"
    state, card = json.loads(state_path.read_text()), json.loads(card_path.read_text())
    state_path.write_text(json.dumps({name: value for name, value in state.items() if name != "affine"}))
    card["files"]["model.json"] = hashlib.sha256(state_path.read_bytes()).hexdigest()
    card_path.write_text(json.dumps(card))
    loaded = predictor.load(tmp_path / "saved")
    assert loaded.model.affine_ is None
    model.affine_ = None
    columns = as_columns(rows_to_columns(holdout))
    np.testing.assert_array_equal(model.predict(columns)["best_ms"], loaded.predict(columns)["best_ms"])


def test_per_group_and_pooled_residual_trees_survive_save_and_load(known_device, small_rows, tmp_path):
    training, holdout = small_rows
    prior = priors.load_prior(known_device)
    columns = as_columns(rows_to_columns(holdout))
    model = TransferPredictor(prior, "residual").fit(_wide_dense_slower(training))
    assert isinstance(model.estimator_, dict) and model.tree_weight_ > 0
    # A residual predictor saved before the trees were per operator group holds one pooled model (the same
    # design as the feature strategy's): it still loads and predicts as saved.
    pooled = TransferPredictor(prior, "residual").fit(_wide_dense_slower(training))
    pooled.estimator_ = TransferPredictor(prior, "feature").fit(training).estimator_
    for name, fitted in (("per-group", model), ("pooled", pooled)):
        predictor.save(fitted, tmp_path / name, {"runner": {"version": "0.2.0"}})
        loaded = predictor.load(tmp_path / name)
        assert type(loaded.model.estimator_) is type(fitted.estimator_)
        np.testing.assert_array_equal(fitted.predict(columns)["best_ms"], loaded.predict(columns)["best_ms"])
    with_trees = pooled.predict_impl(columns, "dense")  # the pooled trees are applied, not skipped
    pooled.estimator_ = None
    assert not np.allclose(with_trees, pooled.predict_impl(columns, "dense"))
    # Per-group trees fitted on another design (a later jcw's shape features) are refused in one sentence.
    state_path, card_path = tmp_path / "per-group" / "model.json", tmp_path / "per-group" / "card.json"
    state, card = json.loads(state_path.read_text()), json.loads(card_path.read_text())
    state_path.write_text(json.dumps({**state, "residual_design": state["residual_design"][:-1]}))
    card["files"]["model.json"] = hashlib.sha256(state_path.read_bytes()).hexdigest()
    card_path.write_text(json.dumps(card))
    with pytest.raises(PredictorError, match="does not fit this jcw's features"):
        predictor.load(tmp_path / "per-group")


def test_a_prior_unlike_the_new_device_is_declined_and_the_card_says_why(small_profile, small_rows, known_device,
                                                                         tmp_path, capsys):
    """A prior whose latencies have nothing to do with the new device's (its labels shuffled across layers) is
    declined on the new device's own layers held out by shape; the 1.3-1.8x slower known device is not."""
    rows = small_rows[0]
    shuffled = np.random.default_rng(1).permutation([r["latency_us"] for r in rows])
    unlike = _save_prior([{**r, "latency_us": float(v)} for r, v in zip(rows, shuffled)], tmp_path / "unlike")
    out = tmp_path / "predictor"
    # residual builds on the prior's predictions (auto could pick feature, whose trees learn to ignore them)
    assert main(["train", "--profile", str(small_profile), "--prior", str(unlike), "--out", str(out),
                 "--strategy", "residual"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["prior"] is None and card["model"] != "transfer" and not (out / priors.PRIOR_DIR).exists()
    assert card["prior_declined"]["sha256"] == priors.prior_sha256(unlike)
    assert "too unlike this one" in card["prior_declined"]["why"] and "prior (declined)" in capsys.readouterr().out
    from jcw.predictor.pipeline import NO_PRIOR, choose_transfer
    picked, scores, why = choose_transfer(priors.load_prior(known_device), LatencyPredictor("hybrid"), rows,
                                          STRATEGIES)
    assert picked in STRATEGIES and why is None and set(scores) == {*STRATEGIES, NO_PRIOR}
    assert scores[picked] == max(scores[name] for name in STRATEGIES)


def test_auto_picks_the_strategy_that_scores_best_on_the_profiles_own_layers(transferred):
    out, status = transferred  # jcw train --prior with the default --strategy auto
    card = json.loads((out / "card.json").read_text())["prior"]
    assert status == 0 and card["asked"] == "auto" and set(card["strategy_scores"]) == {*STRATEGIES, "no prior"}
    assert card["strategy_scores"][card["strategy"]] == max(card["strategy_scores"][s] for s in STRATEGIES)


def test_a_tampered_copy_of_the_prior_inside_a_predictor_is_refused(transferred, tmp_path):
    for name, change in (("model.json", lambda text: text.replace('"n_training_rows": ', '"n_training_rows": 1')),
                         ("card.json", lambda text: text.replace('"known-phone"', '"other-phone"'))):
        copy = tmp_path / name
        shutil.copytree(transferred[0], copy)
        path = copy / "prior" / name
        path.write_text(change(path.read_text()))
        with pytest.raises(PredictorError, match="does not match the hash in its card"):
            predictor.load(copy)


@pytest.mark.parametrize("damage, words", [
    ("missing", "no predictor directory"),
    ("tampered", "does not match the hash in its card"),
    ("runner", "runner"),
    ("schema", "feature schema"),
    ("format", "not a jcw predictor"),
    ("profile", "is a profile, not a predictor"),
])
def test_a_missing_foreign_or_tampered_prior_is_one_sentence(damage, words, small_profile, prior_copy, tmp_path,
                                                             capsys):
    card_path = prior_copy / "card.json"
    card = json.loads(card_path.read_text())
    prior = prior_copy
    if damage == "missing":
        prior = tmp_path / "absent"
    elif damage == "tampered":
        (prior_copy / "model.json").write_text((prior_copy / "model.json").read_text() + " ")
    elif damage == "profile":
        prior = small_profile
    else:
        card.update({"runner": {"version": "0.1.4"}} if damage == "runner" else
                    {"feature_schema_version": 999} if damage == "schema" else {"format": "onnx"})
        card_path.write_text(json.dumps(card))
    out = tmp_path / "out"
    status = main(["train", "--profile", str(small_profile), "--prior", str(prior), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and "--prior" in err and words in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # refused before anything was trained or written


def test_the_closest_prior_is_chosen_by_the_new_devices_measured_layers(small_profile, small_rows, known_device,
                                                                        tmp_path, capsys):
    training, holdout = small_rows
    # Another device, 1.5x slower overall but with its own per-layer character: no rescaling explains it.
    far = _save_prior(_slower(training, {"dense": 1.5, "sparse": 1.5}, noise=0.6, seed=3), tmp_path / "far")
    chosen, scores = priors.choose_prior([priors.load_prior(far), priors.load_prior(known_device)], training)
    assert chosen.path == known_device and [s["chosen"] for s in scores] == [False, True]
    assert scores[1]["rescaled"] < scores[0]["rescaled"]
    out = tmp_path / "out"
    assert main(["train", "--profile", str(small_profile), "--prior", str(far), "--prior", str(known_device),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "closest prior" in printed and "yes" in printed
    card = json.loads((out / "card.json").read_text())
    assert card["prior"]["path"] == str(known_device) and len(card["prior"]["candidates"]) == 2


def test_out_may_not_be_the_prior_itself(small_profile, prior_copy, capsys):
    before = priors.prior_sha256(prior_copy)
    assert main(["train", "--profile", str(small_profile), "--prior", str(prior_copy), "--out", str(prior_copy)]) == 2
    assert "is the --prior itself" in capsys.readouterr().err
    assert priors.prior_sha256(prior_copy) == before


def test_transfer_parameters_are_validated_naming_the_parameter(known_device, small_rows):
    prior = priors.load_prior(known_device)
    for params, name in (({"strategy": "magic"}, "'strategy'"), ({"shrinkage": -1.0}, "'shrinkage'"),
                         ({"n_estimators": 0}, "'n_estimators'")):
        with pytest.raises(PredictorError, match=name):
            TransferPredictor(prior, **params).fit(small_rows[0])
    with pytest.raises(PredictorError, match="'prior'"):
        TransferPredictor(object()).fit(small_rows[0])


def test_profile_with_a_prior_plans_real_layers_over_every_operator_group(known_device, tmp_path, capsys):
    out = tmp_path / "new-phone"
    argv = ["profile", "--device", "local", "--out", str(out), "--prior", str(known_device), "--budget", "12",
            "--holdout", "0", "--unseen", "0", "--programs", "0", "--rounds", "1", "--settle-cap", "0",
            *[f"--runner-arg={flag}" for flag in FAST]]
    assert main(argv) == 0
    with ProfileStore(out, readonly=True) as store:
        planned = store.plan()
        recorded = store.get_meta("transfer_priors")
    training = [r for r in planned if r["sample"] not in plans.HELD_OUT_SAMPLES]
    assert {r["sample"] for r in training} == {"prior"}  # real-network layers only: no random or coverage ones
    strata = {plans.transfer_stratum(r["op"], r["k"]) for r in training}
    assert strata == {"conv 1x1", "conv kxk", "dwconv"}
    assert recorded == [{"path": str(known_device), "sha256": priors.prior_sha256(known_device)}]
    # The plan is not the default one, so a rerun without --prior cannot extend it.
    capsys.readouterr()
    assert main(argv[:6] + argv[8:]) == 2
    assert "--prior" in capsys.readouterr().err
    # Trained without the prior, it says how to use it.
    assert main(["train", "--profile", str(out), "--out", str(tmp_path / "p"), "--model", "linear"]) == 0
    assert f"train with --prior {known_device}" in capsys.readouterr().out


def test_profile_refuses_a_prior_of_another_runner_series_before_measuring(prior_copy, tmp_path, capsys):
    card = json.loads((prior_copy / "card.json").read_text())
    card["runner"] = {"version": "0.9.0"}
    (prior_copy / "card.json").write_text(json.dumps(card))
    out = tmp_path / "new-phone"
    assert main(["profile", "--device", "local", "--out", str(out), "--prior", str(prior_copy), "--budget", "4",
                 "--programs", "0"]) == 2
    err = capsys.readouterr().err
    assert "runner 0.9.0" in err and len(err.strip().splitlines()) == 1
    if (out / "profile.sqlite").exists():  # the store may be opened before the device is asked; never measured
        with ProfileStore(out, readonly=True) as store:
            assert not store.measurements()
