"""A rule with a channel granularity: `GroupNormalization` is pruned in whole groups.

One registration (`granularity=group_size`) makes the graph, the regularizer's
masks, the shrink's rounding, the width solver and surgery keep a group
normalization's groups whole, so the rebuilt model is exact.
"""

import numpy as np
import pytest
from patterns import group_norm, randomize, sample_input
from tf_profiler import profiler_flops

from morphcli.core.costs import CostModel
from morphcli.core.graph import build_graph
from morphcli.core.solver import solve_multiplier
from morphcli.core.surgery import apply_structure, zero_dead_channels
from morphcli.steps.shrink import round_masks
from morphcli.training.regularizers import make_regularizer


def _conv1_group(graph):
    return graph.groups[graph.node("conv1").outputs[0].groups[0]]


def test_the_group_norm_group_is_pruned_in_blocks_of_its_group_size():
    graph = build_graph(group_norm())
    group = _conv1_group(graph)
    assert (group.width, group.block, group.prunable) == (12, 3, True)
    assert "in blocks of 3" in group.describe()
    assert all(g.block == 1 for g in graph.groups.values() if g.id != group.id)


@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False),
                                          (False, False)])
def test_group_norm_flops_equal_the_profiler(scale, center):
    model = group_norm(scale, center)
    assert CostModel(build_graph(model)).total("flops") == profiler_flops(model)


def test_group_norm_flops_by_hand_at_half_width():
    # 36 positions. The group norm: 6 * 36 + 3 per channel and 4 per group, so
    # 12 channels (4 groups) cost 2644 and 6 channels (2 groups) 1322; conv1 loses
    # half its kernel and bias work, conv2 half its kernel work.
    graph = build_graph(group_norm())
    costs = CostModel(graph)
    gid = _conv1_group(graph).id
    conv1 = 2 * 9 * 36 * 3 * 6 + 36 * 6  # the removed half of conv1
    conv2 = 2 * 9 * 36 * 6 * 5  # the removed half of conv2's kernel work
    assert costs.total("flops") - costs.total("flops", {gid: 6}) == conv1 + conv2 + 1322


def test_surgery_without_whole_groups_is_exact():
    seed = randomize(group_norm(), seed=3)
    graph = build_graph(seed)
    gid = _conv1_group(graph).id
    alive = {gid: np.repeat([True, False, True, False], 3)}
    pruned = apply_structure(seed, alive, graph, fold_constants=False)
    assert pruned.get_layer("gn").groups == 2 and pruned.get_layer("conv1").filters == 6
    x = sample_input(seed)
    zero_dead_channels(seed, alive, graph)
    np.testing.assert_allclose(pruned(x), seed(x), atol=1e-5)


def test_masks_keep_a_block_when_any_channel_lives():
    model = group_norm()
    graph = build_graph(model)
    gid = _conv1_group(graph).id
    gamma = np.full(12, 1e-4, np.float32)
    gamma[4] = 0.5  # one live channel in the second block
    model.get_layer("gn").gamma.assign(gamma)
    reg = make_regularizer(graph, CostModel(graph), "gamma", "flops")
    assert reg.alive_masks()[gid].tolist() == [False] * 3 + [True] * 3 + [False] * 6
    gamma[:] = 1e-4
    model.get_layer("gn").gamma.assign(gamma)
    assert reg.alive_masks()[gid].sum() == 3  # min_channels 1: the strongest block


def test_rounding_revives_whole_blocks():
    mask = np.repeat([False, True, False, False], 3)
    values = np.array([0, 0, 0.2, 0, 0, 0, 0, 0.1, 0, 0.3, 0, 0])
    rounded = round_masks({0: mask}, {0: values}, round_to=2, blocks={0: 3})[0]
    # lcm(2, 3) = 6 channels: the live block and the strongest dead one (0.3).
    assert rounded.tolist() == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3


# Steps are lcm(round_to, 3); the floor (min_channels 1) is one whole group of 3.
@pytest.mark.parametrize("round_to,step", [(1, 3), (2, 6), (4, 12)])
def test_the_solver_moves_the_group_in_whole_blocks(round_to, step):
    graph = build_graph(group_norm())
    costs = CostModel(graph)
    gid = _conv1_group(graph).id
    for factor in (0.3, 0.5, 2.0):
        expansion = solve_multiplier(costs, "flops", factor * costs.total("flops"),
                                     round_to=round_to)
        width = expansion.widths[gid]
        assert width % step == 0 or width == 3, width  # 3: the floor, one whole group
        assert expansion.achieved <= expansion.target
