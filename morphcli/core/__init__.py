"""Pure model arithmetic: layer rules, channel groups, costs, surgery, structures,
the width solver and the one adapter over Keras internals. No training, no
configuration, no presentation: nothing here imports from the layers above."""
