"""Sound training (issue 22): precise batch norm after every training, one warning
for a momentum that cannot converge in the run's steps, and a model at chance on
validation marked as not usable instead of being named the winner."""

import logging

import pytest

from morphcli import reporting as report
from morphcli.config import load_config
from morphcli.steps.context import make_context
from morphcli.steps.retrain import retrain
from morphcli.training import engine


def _slow_momentum_retrain(tmp_path, batches: int, caplog):
    """zoo:cnn on digits with keras.applications' MobileNetV2 momentum (0.999),
    3 epochs of 21 batches (1,293 training digits once validation and selection are
    held out): 0.999 ** 63 = 0.939 of the initial statistics remain."""
    conf = load_config(None, {"model.seed": "zoo:cnn", "seed": 0, "retrain.epochs": 3,
                              "retrain.precise_batch_norm": batches})
    ctx = make_context(conf)
    for norm in engine.batch_norms(ctx.seed.model):
        norm.momentum = 0.999
    with caplog.at_level(logging.WARNING, logger="morphcli"):
        result = retrain(ctx, ctx.seed, tmp_path / str(batches))
    lines = [r.getMessage() for r in caplog.records if "momentum" in r.getMessage()]
    caplog.clear()
    return result.metrics, lines


def test_precise_batch_norm_restores_a_slow_momentum_models_inference_accuracy(
        tmp_path, caplog):
    stale, stale_lines = _slow_momentum_retrain(tmp_path, 0, caplog)
    precise, precise_lines = _slow_momentum_retrain(tmp_path, 100, caplog)
    # same weights (precise BN changes only the moving statistics): same training accuracy
    assert precise["train_accuracy"] == pytest.approx(stale["train_accuracy"])
    assert stale["train_accuracy"] > 0.98
    # The moving statistics still hold 94% of their start. How badly that scores depends
    # on the machine's float rounding: seeds 0-2 scored 0.63, 0.30 and 0.21 stale and
    # 0.992, 0.997 and 0.994 precise on an AMD EPYC (seed 0 scored under 0.6 elsewhere).
    assert stale["val_accuracy"] < 0.7
    assert precise["val_accuracy"] > 0.97
    assert precise["val_accuracy"] - stale["val_accuracy"] > 0.3
    assert precise["precise_batch_norm"] == 100
    # one warning line each, saying what was done about it
    assert stale_lines == ["batch norm momentum 0.999 keeps 94% of its initial statistics "
                           "after 63 steps; precise batch norm is off, so validation may "
                           "score near chance; set precise_batch_norm > 0"]
    assert precise_lines == ["batch norm momentum 0.999 keeps 94% of its initial statistics "
                             "after 63 steps; re-estimating them over 21 training batches "
                             "after training (precise batch norm)"]


def test_a_retrain_is_the_same_whatever_the_process_read_before(tmp_path):
    """Precise batch norm re-estimates on the epoch-keyed batches after the last
    epoch, not on the shuffled stream (which reshuffles at every read): the same
    structure retrained twice in one process, with reads of the stream between (as
    the shrink and the search make), ends with the same weights and statistics. It
    did not: 98.61% then 98.89% on digits."""
    import numpy as np

    conf = load_config(None, {"model.seed": "zoo:cnn", "seed": 0, "retrain.epochs": 1})
    ctx = make_context(conf)
    first = retrain(ctx, ctx.seed, tmp_path / "a")
    for _ in ctx.dataset.train.take(3):
        pass
    second = retrain(ctx, ctx.seed, tmp_path / "b")
    assert first.metrics["val_accuracy"] == second.metrics["val_accuracy"]
    assert first.metrics["select_accuracy"] == second.metrics["select_accuracy"]
    pairs = zip(first.trained.model.get_weights(), second.trained.model.get_weights(),
                strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)


def test_precise_batch_norm_is_on_by_default_for_shrink_and_retrain():
    conf = load_config(None, {})
    assert conf.shrink.precise_batch_norm == conf.retrain.precise_batch_norm == 100
    assert engine.TrainSpec.of(conf.retrain).precise_batch_norm == 100
    assert engine.TrainSpec.of({"precise_batch_norm": 0}).precise_batch_norm == 0


def test_stale_statistics_by_hand():
    import keras

    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(momentum=0.9)(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.999)(x))
    momentum, share = engine.stale_statistics(model, 756)  # 12 epochs x 63 batches
    assert momentum == pytest.approx(0.999)
    assert share == pytest.approx(0.999 ** 756, rel=1e-4)  # 0.4694
    assert engine.stale_statistics(model, 3000) is None  # 0.999^3000 = 0.0497 <= 5%
    model.layers[-1].momentum = 0.99
    assert engine.stale_statistics(model, 756) is None  # 0.99^756 = 5e-4


@pytest.mark.parametrize(("val", "train", "chance", "verdict"), [
    (0.101, 0.988, 0.10, True),    # MobileNetV2, momentum 0.999, 12 epochs
    (0.189, 0.99, 0.10, True),     # under chance + 0.1 x 0.9 = 0.19
    (0.191, 0.99, 0.10, False),
    (0.12, 0.50, 0.10, False),     # does not fit the training data either: not this failure
    (0.54, 0.99, 0.50, True),      # two balanced classes: under 0.5 + 0.05
    (0.94, 0.99, 0.10, False),
    (None, 0.99, 0.10, False),
])
def test_near_chance_by_hand(val, train, chance, verdict):
    assert engine.near_chance(val, train, chance) is verdict


def _rows(usable_morph: bool, usable_uniform: bool) -> dict:
    cost = {"flops": 100, "params": 10, "latency_s": 1e-3}
    return {"morphnet": {**cost, "val_accuracy": 0.101, "train_accuracy": 0.988,
                         "usable": usable_morph},
            "uniform baseline": {**cost, "val_accuracy": 0.084, "train_accuracy": 0.989,
                                 "usable": usable_uniform}}


def test_a_model_at_chance_is_marked_and_no_winner_is_named():
    comparison = report.compare(_rows(False, False), "flops", 1000)
    assert comparison["best"] is None
    assert comparison["unusable"] == ["morphnet", "uniform baseline"]
    assert report.comparison_line(comparison) == (
        "no winner: morphnet scores near chance on validation (10.1%, 98.8% on training) and "
        "uniform baseline scores near chance on validation (8.4%, 98.9% on training): "
        "not usable")
    assert report.compare(_rows(True, False), "flops", 1000)["best"] is None
    assert report.compare(_rows(True, True), "flops", 1000)["best"] == "morphnet"  # +17


def test_the_results_table_and_markdown_mark_an_unusable_model():
    from rich.console import Console

    console = Console(width=80, record=True)
    console.print(report.results_table(_rows(False, True)))
    text = console.export_text()
    assert "10.10% ✗" in text and "8.40% ✗" not in text
    assert report.UNUSABLE_NOTE in " ".join(text.split())
    data = {"target": {"metric": "flops", "value": 50}, "models": _rows(False, True),
            "comparison": report.compare(_rows(False, True), "flops", 1000)}
    markdown = report.results_markdown(data)
    assert "| morphnet | " in markdown and "10.10% ✗ |" in markdown
    assert report.UNUSABLE_NOTE + "." in markdown
    assert "no winner: morphnet scores near chance" in markdown


# --- honest selection: choices on a split carved out of the training data --------------

def _ids(tmp_path, with_val: bool):
    """An npz whose every example is its own id (one pixel), so splits can be traced."""
    import numpy as np

    x = np.arange(200, dtype=np.float32).reshape(200, 1, 1, 1)
    y = np.arange(200) % 4
    arrays = {"x_train": x, "y_train": y}
    if with_val:
        arrays.update(x_val=np.arange(1000, 1040, dtype=np.float32).reshape(40, 1, 1, 1),
                      y_val=np.arange(40) % 4)
    np.savez(tmp_path / "ids.npz", **arrays)
    return f"npz:{tmp_path / 'ids.npz'}"


def _seen(pipeline) -> set[int]:
    return {int(v) for x, _ in pipeline for v in x.numpy().ravel()}


@pytest.mark.parametrize("with_val", [False, True])
def test_the_selection_split_is_carved_from_training_data_only(tmp_path, with_val):
    from morphcli.training.data import load_dataset

    data = load_dataset(_ids(tmp_path, with_val), batch_size=16, validation_split=0.2,
                        selection_split=0.1)
    train, val, select = (_seen(p) for p in (data.train, data.val, data.select))
    if with_val:  # the file's own validation set is kept whole for reporting
        assert val == set(range(1000, 1040)) and data.val_size == 40
        assert (data.train_size, data.select_size) == (180, 20)  # 10% of 200, per class 5
    else:  # 20% validates (10 a class), then 10% of the other 160 selects (4 a class)
        assert (data.train_size, data.val_size, data.select_size) == (144, 40, 16)
    assert len(train) == data.train_size and len(select) == data.select_size
    assert not (train & select) and not (train & val) and not (select & val)
    assert select < set(range(200))


def test_choices_are_made_on_the_selection_split_not_on_validation():
    cost = {"flops": 100, "params": 10, "latency_s": 1e-3}
    rows = {"morphnet": {**cost, "val_accuracy": 0.95, "select_accuracy": 0.90},
            "uniform baseline": {**cost, "val_accuracy": 0.90, "select_accuracy": 0.95}}
    comparison = report.compare(rows, "flops", 1000, 400)
    assert comparison["best"] == "uniform baseline"  # validation would say morphnet
    assert (comparison["chosen_on"], comparison["chosen_images"]) == ("selection", -20)
    assert comparison["images"] == 50 and comparison["difference"] == pytest.approx(0.05)
    assert report.comparison_line(comparison) == (
        "best: uniform baseline (more selection examples right: -20 of 400); on validation, "
        "which did not choose: morphnet − uniform = +5.00%, +50 of 1,000 examples")
    no_split = report.compare(rows, "flops", 1000, 0)  # e.g. images:DIR: said so
    assert (no_split["best"], no_split["chosen_on"]) == ("morphnet", "validation")
    assert "no selection split, so validation chose" in report.comparison_line(no_split)
