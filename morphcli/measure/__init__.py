"""Measurement: the one place that turns a Keras model into something runnable
and times it.

- `convert`: the one conversion to TFLite, through a SavedModel, that `morph
  export` writes and `morph profile`, `morph bench` and `expand --measure` time:
  the bytes timed are the bytes deployed.
- `runners`: a call of a Keras model, a SavedModel or a .tflite model on a
  batch, and the files they come from.
- `clock`: interleaved rounds of calls, their quantiles, and `Clock`, which
  keeps the runners of models timed more than once; the bounds on what a
  measurement may ask of this machine (threads, batch).
- `bench`: `morph bench`'s protocol (warm-up rounds, then timed rounds,
  interleaved call by call, ratios to the first).
- `isolated`: that protocol on the exported files in a worker process that
  has done nothing else, as `morph bench` runs: what `expand --measure` and
  `morph run` time on a TFLite device.

What this machine is (its CPU, cores, memory, TensorFlow) is in
`morphcli.core.machine`: a profile (in core) compares itself with it.
"""
