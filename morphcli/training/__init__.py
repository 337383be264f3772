"""Training machinery: regularizers, channel gates, the `model.fit` engine,
tf.distribute strategies and datasets. Knows nothing of steps, config files or the CLI."""
