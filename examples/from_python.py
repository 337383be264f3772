import os

import keras
import tensorflow as tf
from sklearn.datasets import load_digits

import morphcli

EPOCHS = int(os.environ.get("MORPH_EXAMPLE_EPOCHS", "10"))
keras.utils.set_random_seed(0)

# Your data: any tf.data pipeline, here 8x8 digits in memory with your augmentation.
x, y = load_digits(return_X_y=True)
x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
train = (tf.data.Dataset.from_tensor_slices((x[:1400], y[:1400]))
         .shuffle(1400, seed=0).batch(64)
         .map(lambda a, b: (tf.roll(a, tf.random.uniform([], -1, 2, tf.int32), 2), b)))
val = tf.data.Dataset.from_tensor_slices((x[1400:], y[1400:])).batch(64)

# Your model: a .keras file, keras.applications, or a built-in seed.
model = morphcli.load_model("zoo:cnn", input_shape=(8, 8, 1), classes=10)

# Shrink inside your own model.fit: the loss carries the regularizer, the
# callbacks steer its strength so the learned structure lands on the target.
shrinker = morphcli.Shrinker(model, target="flops=50%")
shrinker.model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                       loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = shrinker.model.fit(
    train, validation_data=val, epochs=EPOCHS,
    callbacks=[*shrinker.callbacks(), keras.callbacks.TerminateOnNaN()], verbose=2)

narrow = shrinker.apply("structure.json", recalibrate=train)  # the surviving weights
print(shrinker.structure()["cost"]["after"]["flops"], morphcli.cost(narrow, "flops"))

# Widen the learned structure back to half of the seed's FLOPs, retrain it, export it.
wide = morphcli.expand(narrow, f"flops={morphcli.cost(model, 'flops') / 2:.0f}")
wide.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
wide.fit(train, validation_data=val, epochs=EPOCHS, verbose=2)
morphcli.export(narrow, "narrow.tflite")
