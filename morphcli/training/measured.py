"""The latency regularizer's prices on a measured device, in TensorFlow.

A `profile:` device prices a structure (`CostModel`, `morphcli.core.profile`) as

    overhead + fixed_k + scale_k · (sum over units of table_u(w_in, w_out))

where each table is interpolated bilinearly, an output width of a tiled unit
costs what the next multiple of the table's `step` costs, and (scale_k,
fixed_k) is the line of the profile's curve the sum of the units falls in
(`Profile.segments`). `MeasuredPrice` evaluates the same inside a compiled
train step: `price` is that number at the alive widths (what the report shows),
and `coefficients` are its slopes along every unit's input and output widths
times the line's scale, which the regularizer's term weighs the sums of the
channel values by. The line is the one of the current alive sum, held
constant within it; inside a measured cell the slope is the cell's (across
a tile, the secant between the measured multiples), so the weights are what
one more channel costs on average.

An attention's inner widths are priced at the widths its table was measured
at (the report scales them by FLOPs, `CostModel._inner_ratio`).
"""

from __future__ import annotations

import numpy as np

from morphcli.core.costs import CostModel


class MeasuredPrice:
    """A cost model's profile as arrays for TensorFlow (see the module docstring).

    The arrays are made once; the TF constants at each call, since a constant made
    while one `tf.function` traces cannot be used eagerly or by another trace.

    Args:
        costs: A `CostModel` on a `profile:` device.
    """

    def __init__(self, costs: CostModel):
        profile, n = costs.profile, len(costs.spaces)
        units = [u for u in costs.units if u.space_in >= 0 or u.space_out >= 0]
        still = [u for u in costs.units if u.space_in < 0 and u.space_out < 0]
        seed = costs.space_widths()
        # Units whose widths cannot change: their seconds, summed once.
        self.constant = float(sum(float(u.seconds(seed)) for u in still))
        self.overhead = profile.overhead_s
        self.curve = profile.segments()
        self.arrays = None
        if units:
            size = max(2, *(max(len(u.table.widths_in), len(u.table.widths_out))
                            for u in units))
            padded = [u.table.padded(size) for u in units]
            self.arrays = (
                *(np.stack([p[k] for p in padded]).astype(np.float32) for k in range(3)),
                *(np.array([p[k] for p in padded], np.int32) for k in (3, 4)),
                np.array([u.table.step if len(u.table.widths_out) > 1 else 1 for u in units],
                         np.float32),
                np.array([u.space_in if u.space_in >= 0 else n for u in units], np.int64),
                np.array([u.space_out if u.space_out >= 0 else n for u in units], np.int64))
        self.n_spaces = n

    def price(self, space_w):
        """The device's latency at space widths `space_w` (a tensor, one entry per
        space and a trailing 1): overhead + the line's fixed part + its scale times
        the units' sum. Differentiable in the widths through the sum."""
        import tensorflow as tf

        units = self._sum(space_w)
        scale, fixed = self._line(units)
        return self.overhead + tf.stop_gradient(fixed) + tf.stop_gradient(scale) * units

    def coefficients(self, space_w):
        """(coef, a, b) monomials `coef · |a| · |none|` of the latency linearised at
        `space_w`: every unit's table slope along its input width (a: its input space)
        and its output width (its output space), times the scale of the curve's line at
        the units' sum; `b` is the "no space" index (width 1, no values)."""
        import tensorflow as tf

        if self.arrays is None:
            return (tf.zeros((0,), tf.float32), tf.zeros((0,), tf.int64),
                    tf.zeros((0,), tf.int64))
        values, slope_in, slope_out, a, b = self._units(space_w)
        scale, _ = self._line(tf.reduce_sum(values) + self.constant)
        coef = tf.stop_gradient(tf.maximum(tf.concat([slope_in, slope_out], 0), 0.0) * scale)
        none = tf.fill(tf.shape(coef), tf.constant(self.n_spaces, tf.int64))
        return coef, tf.concat([a, b], 0), none

    def _sum(self, space_w):
        import tensorflow as tf

        if self.arrays is None:
            return tf.constant(self.constant, tf.float32)
        return tf.reduce_sum(self._units(space_w)[0]) + self.constant

    def _line(self, units):
        """(scale, fixed) of the curve's line at the units' sum (`Profile.segments`)."""
        import tensorflow as tf

        points, slopes, fixed = (tf.constant(a, tf.float32) for a in self.curve)
        if not self.curve[0].size:
            return slopes[0], fixed[0]
        k = tf.searchsorted(points, tf.reshape(tf.cast(units, tf.float32), (1,)),
                            side="right")[0]
        return tf.gather(slopes, k), tf.gather(fixed, k)

    def _units(self, space_w):
        """(seconds of each unit, its slope along its input width, along its output
        width, input spaces, output spaces) at `space_w`, as `Table.at` prices."""
        import tensorflow as tf

        g_in, g_out, table, n_in, n_out, step, a, b = (tf.constant(v) for v in self.arrays)
        x, y = tf.gather(space_w, a), tf.gather(space_w, b)
        # A tiled output width costs what the next multiple of the step costs, or the
        # next measured width inside the grid when that one comes first.
        tiled, y_last = step > 1, tf.gather(g_out, n_out - 1, batch_dims=1)
        tiles = tf.math.ceil(y / step) * step
        above = tf.gather(g_out, tf.minimum(tf.searchsorted(g_out, y[:, None])[:, 0], n_out - 1),
                          batch_dims=1)
        tiled_y = tf.where(tiled, tf.where(y <= y_last, tf.minimum(tiles, above), tiles), y)
        tiled_last = tf.where(tiled, tf.math.ceil(y_last / step) * step, y_last)
        rows = tf.range(tf.shape(table)[0])

        def axis(grid, count, value, last_grown):
            first, last = grid[:, 0], tf.gather(grid, count - 1, batch_dims=1)
            clipped = tf.clip_by_value(value, first, last)
            i = tf.searchsorted(grid, clipped[:, None], side="right")[:, 0] - 1
            i = tf.clip_by_value(i, 0, tf.maximum(count - 2, 0))
            lo, hi = tf.gather(grid, i, batch_dims=1), tf.gather(grid, i + 1, batch_dims=1)
            varies = count > 1
            grow = tf.where(varies, tf.maximum(1.0, value / last_grown), 1.0)
            return i, (clipped - lo) / (hi - lo), hi - lo, first, last, varies, grow

        def bilinear(i, u, j, v):
            def at(di, dj):
                return tf.gather_nd(table, tf.stack([rows, i + di, j + dj], 1))

            t00, t01, t10, t11 = at(0, 0), at(0, 1), at(1, 0), at(1, 1)
            inside = (t00 * (1 - u) * (1 - v) + t10 * u * (1 - v) + t01 * (1 - u) * v
                      + t11 * u * v)
            return inside, (t00, t01, t10, t11)

        x_last = tf.gather(g_in, n_in - 1, batch_dims=1)
        i, u, dx, x0, x1, vary_x, grow_x = axis(g_in, n_in, x, x_last)
        jt, vt, _, _, _, _, grow_yt = axis(g_out, n_out, tiled_y, tiled_last)
        tiled_inside, _ = bilinear(i, u, jt, vt)
        values = tiled_inside * grow_x * grow_yt
        # The slopes: of the surface through the measured widths (across a tile, the
        # secant between its measured multiples); past the grid, the proportional growth.
        j, v, dy, y0, y1, vary_y, _ = axis(g_out, n_out, y, tiled_last)
        inside, (t00, t01, t10, t11) = bilinear(i, u, j, v)

        def slope(value, first, last, last_grown, varies, cell, other_grow):
            partial = tf.where(value > last, inside / last_grown,
                               tf.where(value < first, 0.0, cell))
            return tf.where(varies, partial * other_grow, 0.0)

        slope_in = slope(x, x0, x1, x1, vary_x,
                         ((1 - v) * (t10 - t00) + v * (t11 - t01)) / dx, grow_yt)
        slope_out = slope(y, y0, y1, tiled_last, vary_y,
                          ((1 - u) * (t01 - t00) + u * (t11 - t10)) / dy, grow_x)
        return values, slope_in, slope_out, a, b
