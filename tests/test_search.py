"""The accuracy-aware search (issue 22): candidates at the exact budget, cut from
the trained network by learned scale, scored on the selection split only."""

import numpy as np
import pytest

from morphcli.config import load_config
from morphcli.steps import scoring
from morphcli.steps import search as search_step
from morphcli.steps.context import make_context


def test_top_masks_keep_the_strongest_channels_and_whole_blocks():
    values = {1: np.array([0.5, -2.0, 0.1, 1.0]), 2: np.array([0.1, 0.2, 0.9, 0.0, 0.3, 0.3])}
    masks = scoring.top_masks(values, {1: 2, 2: 4}, {1: 1, 2: 2})
    assert masks[1].tolist() == [False, True, False, True]  # |-2.0| and 1.0
    # blocks of 2: strengths max(0.1, 0.2)=0.2, max(0.9, 0)=0.9, max(0.3, 0.3)=0.3
    assert masks[2].tolist() == [False, False, True, True, True, True]
    with pytest.raises(Exception, match="wider than the trained network"):
        scoring.top_masks(values, {1: 5}, {})


def test_blend_is_the_geometric_mean_by_hand():
    assert search_step._blend({1: 64, 2: 16}, {1: 4, 2: 16}, 0.5) == {1: 16, 2: 16}
    assert search_step._blend({1: 64}, {1: 0}, 0.5) == {1: 8}  # a dead group counts as 1


@pytest.fixture(scope="module")
def shrunk_dir(tmp_path_factory):
    """zoo:cnn (8x8 digits) after a 6-epoch steered shrink to 25% of its FLOPs:
    the context, the learned widths and the shrink folder."""
    from morphcli.steps.shrink import shrink

    conf = load_config(None, {"model.seed": "zoo:cnn", "seed": 0, "shrink.epochs": 6,
                              "target.value": 0.25})
    ctx = make_context(conf)
    folder = tmp_path_factory.mktemp("shrink")
    result = shrink(ctx, folder)
    return ctx, {g: int(m.sum()) for g, m in result.masks.items()}, folder


@pytest.fixture(scope="module")
def shrunk(shrunk_dir):
    return shrunk_dir[:2]


def test_tiers_order_groups_by_the_cost_of_one_more_channel(shrunk):
    ctx, _ = shrunk
    costs = ctx.seed.costs
    # zoo:cnn at 8x8x1, one more channel: conv1 (group 1) 1->33 on 8x8 plus conv2 33->64:
    # 64*9*1 + 64*9*64 MACs; group 2 (conv2 out / conv3 in): 64*9*32 + 16*9*128; group 3
    # (conv3 out / dense in): 16*9*64 + 10. Costliest first.
    groups = [g.id for g in ctx.seed.graph.prunable_groups()]
    assert search_step.tiers(costs, "flops", groups) == [[1], [2], [3]]
    assert search_step.tiers(costs, "flops", groups, 2) == [[1, 2], [3]]


class _Poisoned:
    def __iter__(self):
        raise AssertionError("the search read the validation split")


def _fake_scores(scores):
    def score(self, candidate):
        candidate.select_accuracy, candidate.select_loss = scores(candidate), 0.0
        return candidate
    return score


def test_the_search_never_exceeds_the_budget_nor_reads_validation(shrunk, monkeypatch, tmp_path):
    import json

    ctx, learned = shrunk
    monkeypatch.setattr(ctx.dataset, "val", _Poisoned())
    result = search_step.search(ctx, ctx.seed, learned, finetune_epochs=0, outdir=tmp_path)
    assert len(result.candidates) >= 4
    for c in result.candidates:
        assert c.cost <= ctx.target and c.cost > 0.98 * ctx.target, c.name
        assert 0 <= c.select_accuracy <= 1
    assert result.structure.costs.total("flops") == result.chosen.cost <= ctx.target
    best = min(result.candidates, key=lambda c: c.key)
    kept = result.record["versus_uniform"].get("kept_uniform", False)
    assert result.chosen is (next(c for c in result.candidates if c.name == "uniform")
                             if kept else best)
    record = json.loads((tmp_path / "search.json").read_text())
    assert record["chosen"] == result.chosen.name and record["chosen_on"] == "selection"
    assert record["select_size"] == ctx.dataset.select_size == 145
    assert (tmp_path / "chosen.keras").is_file()


def test_the_search_returns_uniform_when_uniform_scores_best(shrunk, monkeypatch):
    ctx, learned = shrunk
    monkeypatch.setattr(scoring.Scorer, "__call__", _fake_scores(
        lambda c: 0.9 if c.name == "uniform" else 0.8))
    result = search_step.search(ctx, ctx.seed, learned, finetune_epochs=0)
    assert result.chosen.name == "uniform"
    names = [c.name for c in result.candidates]
    assert names[:2] == ["uniform", "morphnet"] and any(n.startswith("local-1") for n in names)


def test_local_moves_climb_while_they_improve(shrunk, monkeypatch):
    ctx, learned = shrunk
    # Score: more channels in group 1 (the costliest tier) is better.
    monkeypatch.setattr(scoring.Scorer, "__call__", _fake_scores(
        lambda c: c.widths[1] / 100))
    result = search_step.search(ctx, ctx.seed, learned, finetune_epochs=0, rounds=3)
    best = max(result.candidates, key=lambda c: c.widths[1])
    assert result.chosen.widths[1] == best.widths[1]
    assert result.chosen.name.startswith("local-")
    assert any(c.name.startswith("local-2") for c in result.candidates)  # it kept climbing


def test_candidates_are_scored_on_one_masked_network_as_their_rebuilt_cuts_score(shrunk):
    """The masked copy is traced once for every candidate; each candidate starts
    from the same weights, optimizer state and batches (scoring one twice gives the
    same numbers), and scores what its cut, rebuilt and fine-tuned alone, scores."""
    ctx, learned = shrunk
    values = search_step.channel_values(ctx.seed, "gamma", "flops")
    groups = [g.id for g in ctx.seed.graph.prunable_groups()]
    half = {g: ctx.seed.graph.groups[g].width // 2 for g in groups}
    quarter = {g: ctx.seed.graph.groups[g].width // 4 for g in groups}

    masked = scoring.Scorer(ctx, ctx.seed, values, finetune_epochs=0.5, learning_rate=1e-3)
    first = masked(search_step.Candidate("half", half, 0.0))
    assert masked.masked is not None
    masked(search_step.Candidate("quarter", quarter, 0.0))
    again = masked(search_step.Candidate("half again", half, 0.0))
    assert again.select_loss == pytest.approx(first.select_loss, rel=1e-6)
    assert again.select_accuracy == first.select_accuracy
    # the same cut rebuilt (and traced) on its own, on the same batches
    alone = masked._rebuilt_score(scoring.top_masks(values, half, masked.blocks))
    assert alone["loss"] == pytest.approx(first.select_loss, rel=1e-3)
    assert abs(alone["accuracy"] - first.select_accuracy) <= 1 / 145


def test_candidates_cut_from_a_narrower_network_score_as_from_the_full_one(shrunk):
    """Within the envelope (the widest each group gets among the candidates) every
    candidate keeps the channels it keeps in the trained network, so the masked
    network is the trained one cut to the envelope: the same scores, less work. A
    candidate wider than the envelope widens it, and still scores the same."""
    ctx, _ = shrunk
    values = search_step.channel_values(ctx.seed, "gamma", "flops")
    groups = [g.id for g in ctx.seed.graph.prunable_groups()]
    full = {g: ctx.seed.graph.groups[g].width for g in groups}  # 32, 64, 128
    half = {g: full[g] // 2 for g in groups}
    quarter = {g: full[g] // 4 for g in groups}
    wide = {**quarter, groups[0]: full[groups[0]] * 3 // 4}

    def scorer(envelope=None):
        return scoring.Scorer(ctx, ctx.seed, values, finetune_epochs=0.5,
                                   learning_rate=1e-3, envelope=envelope)

    reference = scorer()  # masks on the full-width network
    expected = {name: reference(search_step.Candidate(name, widths, 0.0))
                for name, widths in (("half", half), ("quarter", quarter), ("wide", wide))}
    narrow = scorer(envelope=half)
    for name, widths in (("half", half), ("quarter", quarter)):
        got = narrow(search_step.Candidate(name, widths, 0.0))
        assert got.select_loss == pytest.approx(expected[name].select_loss, rel=1e-4)
        assert np.array_equal(got.correct, expected[name].correct)
    graph = narrow.masked.graph
    assert {g: graph.groups[g].width for g in groups} == half  # 16, 32, 64: not 32, 64, 128
    got = narrow(search_step.Candidate("wide", wide, 0.0))
    assert narrow.envelope == {**half, groups[0]: 24}
    assert {g: narrow.masked.graph.groups[g].width for g in groups} == narrow.envelope
    assert got.select_loss == pytest.approx(expected["wide"].select_loss, rel=1e-4)
    assert np.array_equal(got.correct, expected["wide"].correct)


def test_the_envelope_holds_every_first_round_candidate(shrunk, monkeypatch):
    # by hand: per group the widest base at the budget, times the move (1.3), rounded
    # up, plus round_to; never wider than the trained network
    bases = [{1: 10, 2: 20}, {1: 14, 2: 8}]
    # group 1: max(13 + 1, ceil(18.2) + 1) = 20; group 2: max(26 + 1, 11 + 1) = 27 -> 16
    assert scoring.envelope(bases, {1: 32, 2: 16}, 1.3, 1) == {1: 20, 2: 16}
    assert scoring.envelope(bases, {1: 32, 2: 16}, 1.0) == {1: 14, 2: 16}
    ctx, learned = shrunk
    seen = []

    def record(self, candidate):
        seen.append((dict(candidate.widths), dict(self.envelope)))
        candidate.select_accuracy, candidate.select_loss = 0.5, 0.0
        return candidate

    monkeypatch.setattr(scoring.Scorer, "__call__", record)
    result = search_step.search(ctx, ctx.seed, learned, finetune_epochs=0, rounds=1)
    envelope = seen[0][1]
    assert len(seen) == len(result.candidates) >= 4
    for widths, held in seen:
        assert held == envelope and all(widths[g] <= envelope[g] for g in widths)
    # the widest of each group over the candidates, at most, plus what unscored
    # moves around the other bases could need; narrower than the trained network
    full = {g.id: g.width for g in ctx.seed.graph.prunable_groups()}
    assert all(envelope[g] <= full[g] for g in full)
    assert ctx.seed.costs.total("flops", ctx.seed.costs.width_vector(envelope)) < (
        0.6 * ctx.seed.costs.total("flops"))


def test_scoring_is_paired_through_dropout_without_reseeding():
    """A candidate scored again, after another, gets the same dropout draws: the
    restored variables include the layers' seed states (the search does not reseed
    TensorFlow per candidate, which clears its kernel cache)."""
    import keras

    conf = load_config(None, {"seed": 0})
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(x))
    ctx = make_context(conf, model=model)
    values = search_step.channel_values(ctx.seed, "gamma", "flops")
    (gid,) = values
    scorer = scoring.Scorer(ctx, ctx.seed, values, finetune_epochs=1, learning_rate=1e-2)
    first = scorer(search_step.Candidate("a", {gid: 8}, 0.0))
    scorer(search_step.Candidate("b", {gid: 4}, 0.0))
    again = scorer(search_step.Candidate("a", {gid: 8}, 0.0))
    assert scorer.masked is not None
    assert again.select_loss == pytest.approx(first.select_loss, rel=1e-6)
    assert np.array_equal(again.correct, first.correct)


def test_the_envelope_keeps_whole_blocks():
    """A group normalization reads its channels in blocks (here 4 of 16 channels):
    the envelope is rounded up to whole blocks, so the narrower network can be cut
    and is used, and scores what the full-width masked network scores."""
    import keras

    conf = load_config(None, {"seed": 0})
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.GroupNormalization(groups=4, name="gn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(x))
    ctx = make_context(conf, model=model)
    values = search_step.channel_values(ctx.seed, "gamma", "flops")
    (gid,) = values
    assert ctx.seed.graph.groups[gid].block == 4
    candidate = {gid: 4}
    reference = scoring.Scorer(ctx, ctx.seed, values, finetune_epochs=0.5,
                                    learning_rate=1e-2)(search_step.Candidate("a", candidate, 0))
    narrow = scoring.Scorer(ctx, ctx.seed, values, finetune_epochs=0.5, learning_rate=1e-2,
                                 envelope={gid: 6})
    got = narrow(search_step.Candidate("a", candidate, 0.0))
    assert narrow.envelope == {gid: 8} and narrow.masked is not None
    assert narrow.masked.graph.groups[gid].width == 8
    assert got.select_loss == pytest.approx(reference.select_loss, rel=1e-4)
    assert np.array_equal(got.correct, reference.correct)


def test_the_search_needs_a_selection_split(shrunk, monkeypatch):
    from morphcli.errors import MorphError

    ctx, learned = shrunk
    monkeypatch.setattr(ctx.dataset, "select", None)
    with pytest.raises(MorphError, match="selection split"):
        search_step.search(ctx, ctx.seed, learned)


def test_morph_run_with_the_search_retrains_the_chosen_structure(tmp_path):
    import json

    import keras
    from click.testing import CliRunner

    from morphcli.api import analyze
    from morphcli.cli import cli

    config = tmp_path / "c.yaml"
    config.write_text("model: {seed: zoo:cnn}\ntarget: {metric: flops, value: 0.25}\n"
                      "shrink: {epochs: 2}\nretrain: {epochs: 1}\nrun: {baseline: true}\n"
                      "search: {enabled: true, finetune_epochs: 0.5}\n")
    rundir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(config), "-o", str(rundir), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((rundir / "search" / "search.json").read_text())
    report = json.loads((rundir / "report.json").read_text())
    chosen = next(c for c in record["candidates"] if c["name"] == record["chosen"])
    assert record["chosen_on"] == "selection"
    assert all(c["cost"] <= report["target"]["value"] for c in record["candidates"])
    # the retrained model is the chosen structure, and is compared with the baseline
    final = keras.saving.load_model(rundir / "retrain" / "final.keras")
    assert analyze(final).totals["flops"] == report["models"]["search"]["flops"] \
        == chosen["cost"]
    assert report["comparison"]["names"] == ["search", "uniform baseline"]
    assert report["comparison"]["chosen_on"] == "selection"
    assert "search: chose " in result.stderr
    again = CliRunner().invoke(cli, ["run", str(config), "-o", str(rundir), "--resume"],
                               catch_exceptions=False)
    assert again.exit_code == 0 and "search: already done" in again.stderr


def test_when_the_search_keeps_uniform_the_baseline_is_not_retrained_again(tmp_path,
                                                                          monkeypatch):
    """Uniform chosen: the retrained result is the uniform structure, so the baseline is
    that same model (one retrain, not two whose nondeterministic difference would read
    as a gain or a loss): equal figures, no baseline/final.keras, said in one line."""
    import json

    from click.testing import CliRunner

    from morphcli.cli import cli

    monkeypatch.setattr(scoring.Scorer, "__call__",
                        _fake_scores(lambda c: 0.9 if c.name == "uniform" else 0.5))
    config = tmp_path / "c.yaml"
    config.write_text("model: {seed: zoo:cnn}\ntarget: {metric: flops, value: 0.25}\n"
                      "shrink: {epochs: 1}\nretrain: {epochs: 1}\nrun: {baseline: true}\n"
                      "search: {enabled: true}\n")
    rundir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(config), "-o", str(rundir)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((rundir / "search" / "search.json").read_text())["chosen"] == "uniform"
    report = json.loads((rundir / "report.json").read_text())
    models = report["models"]
    for key in ("val_accuracy", "select_accuracy", "flops", "params", "measured_latency_s"):
        assert models["search"][key] == models["uniform baseline"][key], key
    assert report["comparison"]["same_structure"] is True
    assert report["comparison"]["images"] == 0 and report["comparison"]["best"] == "search"
    assert (rundir / "baseline" / "expand.json").is_file()
    assert not (rundir / "baseline" / "final.keras").exists()
    assert "the search structure is the uniform one" in result.stderr
    assert "best: search, which is the uniform baseline" in result.output


def test_a_gated_shrink_is_refused_before_training(tmp_path):
    from test_cli import user_error

    config = tmp_path / "c.yaml"
    config.write_text("regularizer: {kind: gates}\nsearch: {enabled: true}\n")
    line = user_error("run", str(config), "-o", str(tmp_path / "run"))
    assert "Received: regularizer.kind='gates'" in line
    assert not (tmp_path / "run" / "shrink").exists()


def test_the_benchmarks_rank_correlation_by_hand():
    import math

    quality = _benchmark("quality")
    assert quality.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert quality.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (0, 1, 2) vs (0.5, 0.5, 2), both of mean 1: cov 0.5 + 0 + 1 = 1.5,
    # sums of squares 2 and 1.5 -> 1.5 / sqrt(3) = sqrt(3) / 2
    assert quality.spearman([1, 2, 3], [5, 5, 9]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(quality.spearman([1, 2], [3, 4]))
    assert math.isnan(quality.spearman([1, 1, 1], [3, 4, 5]))


def test_the_quality_benchmarks_latency_arm_reads_what_the_run_timed(capsys):
    """--metric latency: the run's measured times as shares of the seed's, and the table's
    `of seed` (the profile's prediction) beside `measured`."""
    quality = _benchmark("quality")
    report = {"models": {"seed": {"measured_latency_s": 2e-3},
                         "search": {"measured_latency_s": 1e-3},
                         "uniform baseline": {"measured_latency_s": 1.1e-3}}}
    assert quality.measured_shares(report) == pytest.approx((0.5, 0.55))
    cell = quality.Cell("zoo:cnn", 0.5, False, seed_flops=1000.0, seed_cost=4e-3,
                        metric="latency")
    for method, accuracy, cost, measured in (("morphnet", 0.9, 2.1e-3, float("nan")),
                                             ("search", 0.92, 1.9e-3, 0.49),
                                             ("uniform", 0.91, 2e-3, 0.52)):
        cell.runs[method].append(quality.Outcome(accuracy, 480.0, 50.0, {"conv1": 8}, 0.7,
                                                 cost, measured))
    cell.val_sizes, cell.seed_accuracy = [1000], [0.95]
    cell.ranks, cell.search_share, cell.chosen = [float("nan")], [0.4], ["blend-0.5"]
    quality.print_table([cell], 1, "latency")
    out = capsys.readouterr().out
    assert "of seed measured" in out
    # search: 1.9 of 4 ms predicted (47.5%), measured 49.0%; +1 point on 1,000 images
    assert "search           480    47.5%    49.0%        50     92.00%" in out
    assert "uniform          480    50.0%    52.0%" in out
    assert "morphnet         480    52.5%        -" in out  # the run timed no morphnet arm
    assert "search − uniform per seed, in validation images (of 1000): +10" in out


def _benchmark(name: str):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_oracle_benchmarks_candidates_sit_at_the_budget():
    """benchmarks/oracle.py: uniform and each tier x F and / F, solved to the budget.
    zoo:cnn has 3 prunable groups, so one group per tier. At 8x8 (tests/test_cli.py)
    one more channel out of conv1 costs 64*9*(1 + 64) = 37,440 MACs (conv1 and conv2's
    input), out of conv2 64*9*32 + 16*9*128 = 36,864, out of conv3 16*9*64 + 10 = 9,226."""
    oracle = _benchmark("oracle")
    conf = load_config(None, {"model.seed": "zoo:cnn", "seed": 0, "target.metric": "flops",
                              "target.value": 0.1})
    ctx = make_context(conf)
    bases = oracle.candidates(ctx, [2.0])
    assert list(bases) == ["uniform", "tier1×2", "tier1÷2", "tier2×2", "tier2÷2", "tier3×2",
                           "tier3÷2"]
    assert bases["uniform"] == {1: 32, 2: 64, 3: 128}
    assert bases["tier1×2"] == {1: 64, 2: 64, 3: 128}
    assert bases["tier3÷2"] == {1: 32, 2: 64, 3: 64}
    solved = {n: oracle.at_budget(ctx, b, 1) for n, b in bases.items()}
    for name, (widths, cost) in solved.items():
        assert 0.95 * ctx.target < cost <= ctx.target, name
        assert cost == ctx.seed.costs.total("flops", ctx.seed.costs.width_vector(widths))
    assert len({tuple(w.values()) for w, _ in solved.values()}) == 7  # seven structures


def test_the_oracle_benchmarks_conclusions_by_hand(capsys):
    oracle = _benchmark("oracle")

    def rec(val, select, proxy):
        return {"val_accuracy": val, "select_accuracy": select, "proxy_scratch": proxy,
                "cost_share": 0.05}

    # per seed: uniform, a (+2 points on every seed), b (-1, +2, 0)
    results = {s: {"uniform": rec(0.90 + s / 100, 0.5, 0.3),
                   "a": rec(0.92 + s / 100, 0.6, 0.1),
                   "b": rec([0.89, 0.93, 0.92][s], 0.4, 0.2)} for s in range(3)}
    oracle.print_results(results, ["scratch"], 1000)
    out = capsys.readouterr().out
    assert "a              5.00%    92.0    93.0    94.0    +2.00 ± 0.00" in out
    # b: mean +1/3, sd sqrt(((-4/3)^2 + (5/3)^2 + (1/3)^2) / 2) = sqrt(7/3) = 1.5275;
    # t(2) = 4.303: 4.303 * 1.5275 / sqrt(3) = 3.795
    assert "+0.33 ± 3.79" in out and "-1.0, +2.0, +0.0" in out
    assert "- uniform: 91.00 ± 1.00 (seed-to-seed std)" in out
    assert "largest per-seed swing of a difference is 3.0 points" in out
    assert "- largest mean gain over uniform: a +2.00 (+2.0, +2.0, +2.0)" in out
    assert "ahead of uniform on every seed: a; by at least +1.0 on every seed: a" in out
    # selection ranks (uniform, a, b) = (1, 2, 0) on every seed; validation ranks (1, 2, 0),
    # (0, 1.5, 1.5), (0.5, 2, 0.5): Spearman 1, 0 / sqrt(2 * 1.5), 1.5 / sqrt(2 * 1.5)
    assert "own selection accuracy vs validation accuracy, per seed: +1.00, +0.00, +0.87" in out
    # the proxy ranks (2, 0, 1): covariances -1, -1.5, -1.5 over sqrt(4), sqrt(3), sqrt(3)
    assert "proxy scratch vs validation accuracy, per seed: -0.50, -0.87, -0.87" in out


def _hashes(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_morph_search_on_a_shrink_folder(shrunk_dir, tmp_path):
    """`morph search SHRINK_DIR`: every candidate at or under 20% of the seed's FLOPs
    (4,781,948 as TensorFlow's profiler counts zoo:cnn: tests/test_api.py), the best
    selection score chosen (or uniform, when the best does not beat it by more than
    chance), chosen.keras priced as its record says, the shrink folder untouched."""
    import json

    import keras

    from morphcli.steps.context import Priced
    from tests.test_cli import morph

    ctx, _, folder = shrunk_dir
    before = _hashes(folder)
    out = tmp_path / "search"
    result = morph("search", str(folder), "-o", str(out), "--target", "flops=20%",
                   "--rounds", "1", "--finetune-epochs", "0.25", "--json")
    record = json.loads(result.stdout)
    target = 0.2 * ctx.seed.costs.total("flops")
    assert target == pytest.approx(956_389.6)
    assert record["target"] == pytest.approx(target)
    assert record["finetune_epochs"] == 0.25 and record["chosen_on"] == "selection"
    assert all(target * 0.98 < c["cost"] <= target for c in record["candidates"])
    best = max(record["candidates"], key=lambda c: (c["select_accuracy"], -c["select_loss"]))
    kept = (record["versus_uniform"] or {}).get("kept_uniform", False)
    assert record["chosen"] == ("uniform" if kept else best["name"])
    assert kept or not record["versus_uniform"] or record["versus_uniform"]["p"] <= 0.05
    cost = next(c["cost"] for c in record["candidates"] if c["name"] == record["chosen"])
    chosen = keras.saving.load_model(out / "chosen.keras")
    assert Priced.of(chosen, ctx.hardware).costs.total("flops") == cost
    assert _hashes(folder) == before


def test_morph_search_refuses_what_is_not_a_finished_shrink(shrunk_dir, tmp_path):
    from tests.test_cli import user_error

    _, _, folder = shrunk_dir
    before = _hashes(folder)
    assert "is not a shrink folder" in user_error("search", str(tmp_path), "-o",
                                                  str(tmp_path / "o"))
    for inside in (folder, folder.parent):  # --overwrite would delete the shrink
        assert "holds the input --config" in user_error("search", str(folder), "-o", str(inside),
                                                        "--overwrite")
    bad = user_error("search", str(folder), "-o", str(tmp_path / "o"), "--target", "flops=-3")
    assert "`target.value`: Expected a fraction of the seed's flops" in bad
    assert "Received: target.value='-3'" in bad and "a budget must be positive" in bad
    # an epochs setting the scoring does not use would be silently ignored
    unused = user_error("search", str(folder), "-o", str(tmp_path / "o"), "--scoring",
                        "scratch", "--finetune-epochs", "1")
    assert ("Scoring scratch does not use finetune_epochs" in unused
            and "Received: finetune_epochs=1.0 with scoring='scratch'" in unused)
    assert "Scoring finetune does not use scratch_epochs" in user_error(
        "search", str(folder), "-o", str(tmp_path / "o"), "--scratch-epochs", "3")
    assert not (tmp_path / "o").exists()
    assert _hashes(folder) == before


def test_a_parameter_target_is_searched_at_its_exact_budget(shrunk, monkeypatch):
    """A params target: every candidate at or under 30% of the seed's weights, and
    within 5% of that budget."""
    ctx, learned = shrunk
    conf = load_config(None, {"model.seed": "zoo:cnn", "seed": 0, "target.metric": "params",
                              "target.value": 0.3})
    params = make_context(conf)
    seed_params = params.seed.costs.total("params")
    assert params.target == pytest.approx(0.3 * seed_params)
    monkeypatch.setattr(scoring.Scorer, "__call__", _fake_scores(lambda c: c.widths[1]))
    result = search_step.search(params, params.seed, learned, finetune_epochs=0)
    assert len(result.candidates) >= 4
    for c in result.candidates:
        assert 0.95 * params.target < c.cost <= params.target, c.name
    assert result.structure.costs.total("params") == result.chosen.cost


def test_the_sign_test_by_hand():
    # 5 wins, 2 losses: P(X >= 5 | n=7) = (C(7,5) + C(7,6) + C(7,7)) / 2^7 = 29/128
    assert search_step.sign_test(5, 2) == pytest.approx(29 / 128)
    assert search_step.sign_test(9, 1) == pytest.approx(11 / 1024)
    assert search_step.sign_test(0, 0) == 1.0


def _scored(name, accuracy, correct):
    c = search_step.Candidate(name, {}, 0.0, accuracy, 0.1)
    c.correct = np.array(correct, bool)
    return c


def test_a_best_at_chance_is_no_evidence():
    """MobileNetV2 at 10%, seed 2: the shrink collapsed, every candidate scored
    12-15% on the selection split (chance 11%); the best won 26 examples and lost
    16 (p = 0.08) and retrained to 47% (uniform 94.5%). At chance nothing is chosen
    on the selection split, however decisive its sign test would be."""
    uniform = _scored("uniform", 0.10, [0] * 90 + [1] * 10)
    lucky = _scored("morphnet", 0.19, [1] * 19 + [0] * 81)  # +19 -10 against uniform
    for c in (uniform, lucky):
        c.select_chance = 0.11
    # 0.19 < 0.11 + 0.1 * 0.89 = 0.199: at chance, uniform kept
    chosen, record = search_step.choose([uniform, lucky])
    assert chosen is uniform
    assert record == {"best": "morphnet", "accuracy": 0.19, "chance": 0.11, "at_chance": True,
                      "kept_uniform": True}
    assert search_step.kept_line({"versus_uniform": record}) == (
        "; the best, morphnet, scored 19.0% on the selection split, near chance (11.0%): the "
        "shrunk network tells structures apart no better than chance, so uniform was kept")
    # Just past the band, the sign test decides: +19 -0 over 100 examples
    clear = _scored("morphnet", 0.20, [1] * 20 + [0] * 80)
    clear.select_chance = 0.11
    uniform.correct = np.array([1] * 1 + [0] * 99, bool)
    chosen, record = search_step.choose([uniform, clear])
    assert chosen is clear and record["gained"] == 19 and record["lost"] == 0


def test_the_best_must_beat_uniform_by_more_than_chance():
    # uniform right on examples 0-9 of 20; the best right on 0-7 and 10-14: +5 -2
    uniform = _scored("uniform", 0.50, [1] * 10 + [0] * 10)
    close = _scored("local", 0.65, [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5)
    chosen, record = search_step.choose([uniform, close])
    assert chosen is uniform
    assert record == {"best": "local", "gained": 5, "lost": 2, "p": pytest.approx(29 / 128),
                      "rivals": 1, "kept_uniform": True}
    assert "(p = 0.23)" in search_step.kept_line({"versus_uniform": record})
    # +9 -1: p = 11/1024 <= 0.05, the best is chosen
    clear = _scored("blend", 0.90, [1] * 9 + [0] + [1] * 9 + [0])
    chosen, record = search_step.choose([uniform, clear])
    assert chosen is clear and record["kept_uniform"] is False and record["p"] == 11 / 1024
    assert search_step.kept_line({"versus_uniform": record}) == ""
    # uniform best: no test
    assert search_step.choose([uniform, _scored("x", 0.4, [0] * 20)]) == (uniform, {})


def test_the_best_of_several_must_beat_uniform_by_more_than_the_luck_of_the_pick():
    """MobileNetV2 at 5%, seed 2: the best of 8 candidates won 20 selection examples
    and lost 9 against uniform, p = sum_{k>=20} C(29, k) / 2^29 = 0.0307, and
    retrained 1.2 points below uniform. Picked from 8, it needs p <= 0.05 / 8."""
    uniform = _scored("uniform", 0.50, [1] * 9 + [0] * 20 + [1] * 71)
    best = _scored("local-1:tier3+", 0.61, [0] * 9 + [1] * 20 + [1] * 71)
    others = [_scored(f"other{i}", 0.40, [0] * 100) for i in range(7)]
    assert search_step.sign_test(20, 9) == pytest.approx(0.0307, abs=5e-5)
    chosen, record = search_step.choose([uniform, best, *others])
    assert chosen is uniform and record["rivals"] == 8 and record["kept_uniform"]
    assert search_step.kept_line({"versus_uniform": record}) == (
        "; the best, local-1:tier3+, was right on 20 selection examples uniform missed and "
        "wrong on 9 it got (p = 0.03, the best of 8, so it needed p <= 0.006): not better "
        "than chance, so uniform was kept")
    # the same pair alone: p = 0.031 <= 0.05, chosen
    assert search_step.choose([uniform, best])[0] is best
    # +20 -2 picked from 8: p = (231 + 22 + 1) / 2^22 = 6.1e-5 <= 0.00625, chosen
    uniform.correct[:9] = [0] * 7 + [1] * 2
    assert search_step.choose([uniform, best, *others])[0] is best


def test_scratch_scoring_trains_fresh_weights_on_paired_batches(shrunk, monkeypatch, tmp_path):
    """`search.scoring: scratch`: every candidate starts from fresh weights on the same
    batches, so the same structure scores the same examples right twice; the shrink's
    weights are not read (its channel values are not even computed)."""
    import json

    ctx, learned = shrunk
    monkeypatch.setattr(ctx.dataset, "val", _Poisoned())
    monkeypatch.setattr(search_step, "channel_values", None)  # never called
    result = search_step.search(ctx, ctx.seed, learned, outdir=tmp_path, scoring="scratch",
                                scratch_epochs=2)
    for c in result.candidates:
        assert c.cost <= ctx.target and c.cost > 0.98 * ctx.target, c.name
    uniform = next(c for c in result.candidates if c.name == "uniform")
    # 2 epochs of the retrain's schedule fit digits far above chance (0.11)
    assert uniform.select_accuracy > 0.5
    # the batches are the first epochs' (epoch-keyed), whichever scorer draws them
    again = [scoring.Scorer(ctx, ctx.seed, None, finetune_epochs=0, learning_rate=1e-3,
                                 scoring="scratch", scratch_epochs=2)(
        search_step.Candidate("uniform", dict(uniform.widths), uniform.cost)) for _ in range(2)]
    for scored in again:
        assert scored.select_accuracy == uniform.select_accuracy
        assert np.array_equal(scored.correct, uniform.correct)
    record = json.loads((tmp_path / "search.json").read_text())
    assert (record["scoring"], record["scratch_epochs"]) == ("scratch", 2)
    with pytest.raises(Exception, match="Unknown search scoring"):
        search_step.search(ctx, ctx.seed, learned, scoring="oracle")
