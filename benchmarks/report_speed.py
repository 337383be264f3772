"""How long `morph report` takes on ResNet50 at 224x224, beyond TensorFlow's import.

Prints, measured in one run: TF/Keras import time, model build time, and the
time morphcli adds (graph + cost model + report), with the ratio of the
latter to the import time. Goal (issue 2): a few seconds at most.

    .venv/bin/python benchmarks/report_speed.py
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    t0 = time.perf_counter()
    import keras  # noqa: F401  (imports TensorFlow)

    t_import = time.perf_counter() - t0
    from morphcli.api import analyze
    from morphcli.reporting import layer_table, to_json

    t1 = time.perf_counter()
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    t_build = time.perf_counter() - t1
    t2 = time.perf_counter()
    report = analyze(model, hardware="T4")
    to_json(report)
    layer_table(report)
    t_report = time.perf_counter() - t2
    print(f"ResNet50 224x224: {report.totals['flops'] / 1e9:.3f} GFLOPs, "
          f"{report.totals['params']:,} params")
    print(f"import tensorflow+keras  {t_import:6.2f} s")
    print(f"build ResNet50           {t_build:6.2f} s")
    print(f"morphcli report          {t_report:6.2f} s")
    print(f"ratio report / import    {t_report / t_import:6.3f}")


if __name__ == "__main__":
    main()
