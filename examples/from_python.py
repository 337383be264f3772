import os

import keras
import tensorflow as tf
from sklearn.datasets import load_digits

import morphcli

EPOCHS = int(os.environ.get("MORPH_EXAMPLE_EPOCHS", "20"))
keras.utils.set_random_seed(0)

# Your data: any tf.data pipeline. Here 8x8 digits in memory, resized to 32x32,
# with your own augmentation: a random shift of up to 2 pixels.
x, y = load_digits(return_X_y=True)
x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
shift = keras.layers.RandomTranslation(1 / 16, 1 / 16, fill_mode="constant", seed=0)
train = (tf.data.Dataset.from_tensor_slices((x[:1400], y[:1400]))
         .shuffle(1400, seed=0).batch(64)
         .map(lambda a, b: (shift(tf.image.resize(a, (32, 32)), training=True), b)))
val = (tf.data.Dataset.from_tensor_slices((x[1400:], y[1400:])).batch(64)
       .map(lambda a, b: (tf.image.resize(a, (32, 32)), b)))

# Your model: here from keras.applications (random weights, nothing downloaded);
# a .keras file or morphcli.load_model("zoo:resnet20") work the same.
model = keras.applications.MobileNet(alpha=0.25, weights=None, input_shape=(32, 32, 1),
                                     classes=10)
for layer in model.layers:  # its batch norms average over ~100 steps; this run has 22 an epoch
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.9

# Shrink inside your own model.fit: the loss carries the regularizer, the
# callbacks steer its strength so the learned structure lands on the target.
shrinker = morphcli.Shrinker(model, target="flops=50%")
shrinker.model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                       loss="sparse_categorical_crossentropy", metrics=["accuracy"])
mine = keras.callbacks.LambdaCallback(  # your own callback sees the Shrinker's logs
    on_epoch_end=lambda epoch, logs: print(f"alive {logs['alive_fraction']:.0%}"))
history = shrinker.model.fit(train, validation_data=val, epochs=EPOCHS,
                             callbacks=[*shrinker.callbacks(), mine], verbose=2)

narrow = shrinker.apply("structure.json", recalibrate=train)  # the surviving weights
print(shrinker.structure()["cost"]["after"]["flops"], morphcli.cost(narrow, "flops"))

# Scale the learned structure to half the seed's FLOPs, retrain it, export it.
wide = morphcli.expand(model, "flops=0.5", structure="structure.json")
wide.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
             loss="sparse_categorical_crossentropy", metrics=["accuracy"])
wide.fit(train, validation_data=val, epochs=EPOCHS, verbose=2)
morphcli.export(wide, "wide.tflite")
