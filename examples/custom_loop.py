import os

import keras
import tensorflow as tf
from sklearn.datasets import load_digits

import morphcli

EPOCHS = int(os.environ.get("MORPH_EXAMPLE_EPOCHS", "10"))
keras.utils.set_random_seed(0)
x, y = load_digits(return_X_y=True)
train = tf.data.Dataset.from_tensor_slices(
    ((x / 16.0).reshape(-1, 8, 8, 1).astype("float32"), y)).shuffle(1797, seed=0).batch(64)
steps = int(train.cardinality())

model = morphcli.load_model("zoo:cnn", input_shape=(8, 8, 1), classes=10)
shrinker = morphcli.Shrinker(model, target="flops=50%", epochs=EPOCHS,
                             steps_per_epoch=steps, learning_rate=0.1)
optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
task_loss = keras.losses.SparseCategoricalCrossentropy()


@tf.function
def train_step(images, labels):
    with tf.GradientTape() as tape:
        loss = task_loss(labels, model(images, training=True)) + shrinker.penalty()
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return loss


for epoch in range(EPOCHS):
    for batch, (images, labels) in enumerate(train):
        train_step(images, labels)
        shrinker.step(epoch, batch)  # steers the strength (target="...", strength="auto")

narrow = shrinker.apply()
print(f"{morphcli.cost(narrow, 'flops'):,.0f} FLOPs, seed {morphcli.cost(model, 'flops'):,.0f}")
