"""Tests for morphcli.training.data: sources, split rule, pipelines, augmentation, check_fits."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from morphcli.errors import DataError
from morphcli.training.data import check_fits, load_dataset, split_indices

OFFLINE_MESSAGE = ("URL fetch failure on https://storage.googleapis.com/tensorflow/"
                   "tf-keras-datasets/mnist.npz: None -- [Errno -2] Name or service not known")


def first_batch(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


def all_examples(ds):
    pairs = [(x.numpy(), y.numpy()) for x, y in ds]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


# --- split rule ------------------------------------------------------------------


@pytest.mark.parametrize("split, n_val", [(0.5, 3), (0.25, 2), (0.2, 1), (0.0, 0)])
def test_split_indices_rounds_each_class_half_up(split, n_val):
    # Class 0 has 4 examples, class 1 has 2: floor(4*s + .5) + floor(2*s + .5).
    labels = np.array([0, 0, 0, 0, 1, 1])
    train, val = split_indices(labels, split, seed=3)
    assert len(val) == n_val
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(6))


def test_split_indices_on_digits_per_class_counts():
    labels = load_digits().target
    _, val = split_indices(labels, 0.2, seed=0)
    # Class sizes 178,182,177,183,181,182,181,179,174,180 -> x0.2 rounded half up.
    assert np.bincount(labels[val]).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


# --- builtin:digits -----------------------------------------------------------


def test_digits_sizes_shapes_and_dtypes():
    data = load_dataset("builtin:digits", batch_size=64)
    assert (data.train_size, data.val_size) == (1438, 359)
    assert data.input_shape == (8, 8, 1)
    assert data.num_classes == 10
    assert data.name == "builtin:digits"
    x, y = first_batch(data.train)
    assert x.shape == (64, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    # 1438 = 22 * 64 + 30: 23 batches, the last one short.
    assert [int(b[1].shape[0]) for b in data.train][-2:] == [64, 30]


def test_digits_values_cover_the_whole_dataset_scaled_to_unit_range():
    data = load_dataset("builtin:digits", batch_size=500)
    x_train, y_train = all_examples(data.train)
    x_val, y_val = all_examples(data.val)
    assert (len(x_train), len(x_val)) == (1438, 359)
    x = np.concatenate([x_train, x_val])
    assert x.min() == 0.0 and x.max() == 1.0
    digits = load_digits()
    assert np.isclose(x.sum(), digits.images.sum() / 16, rtol=1e-6)
    assert np.bincount(np.concatenate([y_train, y_val])).tolist() == np.bincount(
        digits.target).tolist()


def test_same_seed_same_first_batch_other_seed_differs():
    x0, y0 = first_batch(load_dataset("builtin:digits", seed=7).train)
    x1, y1 = first_batch(load_dataset("builtin:digits", seed=7).train)
    x2, y2 = first_batch(load_dataset("builtin:digits", seed=8).train)
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    assert not np.array_equal(x0, x2)


def test_val_is_not_shuffled_and_epochs_reshuffle_train():
    data = load_dataset("builtin:digits", batch_size=64)
    assert np.array_equal(first_batch(data.val)[0], first_batch(data.val)[0])
    assert not np.array_equal(first_batch(data.train)[0], first_batch(data.train)[0])


def test_no_validation_when_split_is_zero():
    data = load_dataset("builtin:digits", validation_split=0.0)
    assert (data.train_size, data.val_size, data.val) == (1797, 0, None)


def test_image_size_resizes_builtin_data():
    data = load_dataset("builtin:digits", batch_size=8, image_size=(16, 12))
    x, _ = first_batch(data.train)
    assert data.input_shape == (16, 12, 1)
    assert x.shape == (8, 16, 12, 1)
    assert 0.0 <= x.min() and x.max() <= 1.0


# --- augmentation ---------------------------------------------------------------


def shift(image, dy, dx):
    """Move an (H, W, C) image down by dy, right by dx, filling with zeros."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    return padded[1 - dy:1 - dy + height, 1 - dx:1 - dx + width]


def test_augment_shifts_train_images_by_at_most_one_pixel():
    plain, labels = first_batch(load_dataset("builtin:digits", seed=2).train)
    augmented, aug_labels = first_batch(load_dataset("builtin:digits", seed=2, augment=True).train)
    assert augmented.shape == plain.shape == (64, 8, 8, 1)
    assert np.array_equal(labels, aug_labels)
    offsets = list(itertools.product((-1, 0, 1), repeat=2))
    for image, moved in zip(plain, augmented, strict=True):
        assert any(np.array_equal(shift(image, dy, dx), moved) for dy, dx in offsets)
    assert not np.array_equal(plain, augmented)
    again, _ = first_batch(load_dataset("builtin:digits", seed=2, augment=True).train)
    assert np.array_equal(augmented, again)


def test_augment_leaves_validation_alone():
    plain = first_batch(load_dataset("builtin:digits").val)[0]
    augmented = first_batch(load_dataset("builtin:digits", augment=True).val)[0]
    assert np.array_equal(plain, augmented)


# --- npz:PATH --------------------------------------------------------------------


def test_npz_round_trip_with_one_hot_labels_and_2d_images(tmp_path):
    x = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    x[0, 0, 0] = 255
    labels = np.array([0, 1] * 5)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.eye(3, dtype=np.float32)[labels])
    data = load_dataset(f"npz:{path}", batch_size=16, validation_split=0.2)
    # Two classes of 5: floor(5 * 0.2 + 0.5) = 1 each to validation.
    assert (data.train_size, data.val_size) == (8, 2)
    assert data.input_shape == (4, 4, 1)
    assert data.num_classes == 3  # width of the one-hot rows
    x_train, y_train = all_examples(data.train)
    x_val, y_val = all_examples(data.val)
    both = np.concatenate([x_train, x_val])
    assert both.max() == 1.0
    assert np.isclose(both.sum(), x.astype(np.float64).sum() / 255, rtol=1e-6)
    assert sorted(np.concatenate([y_train, y_val]).tolist()) == [0] * 5 + [1] * 5


def test_npz_uses_given_validation_arrays_and_float_vectors(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, x_train=np.full((6, 3), 2.5), y_train=np.array([0, 1, 2, 3, 0, 1]),
             x_val=np.zeros((4, 3)), y_val=np.array([[4], [0], [1], [2]]))
    data = load_dataset(f"npz:{path}", batch_size=4)
    assert (data.train_size, data.val_size) == (6, 4)
    assert (data.input_shape, data.num_classes) == ((3,), 5)
    x, _ = first_batch(data.train)
    assert x.dtype == np.float32 and np.all(x == 2.5)  # floats are not rescaled
    assert all_examples(data.val)[1].tolist() == [4, 0, 1, 2]


@pytest.mark.parametrize("arrays, missing", [
    ({"x_train": np.zeros((2, 3))}, "y_train"),
    ({"y_train": np.zeros(2)}, "x_train"),
    ({"x_train": np.zeros((2, 3)), "y_train": np.zeros(2), "x_val": np.zeros((1, 3))}, "y_val"),
])
def test_npz_missing_key_names_key_and_file(tmp_path, arrays, missing):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=f"no array `{missing}`") as info:
        load_dataset(f"npz:{path}")
    assert str(path) in str(info.value)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'nothing.npz'}")


def test_npz_vectors_cannot_be_augmented(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, x_train=np.zeros((4, 3)), y_train=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="need images"):
        load_dataset(f"npz:{path}", augment=True)


# --- images:DIR ---------------------------------------------------------------------


def write_images(root, classes=("cat", "dog", "emu"), per_class=4):
    """Class c, image i: a constant 6x5 RGB picture of value 50 * c + i."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((6, 5, 3), 50 * c + i, dtype=np.uint8)
            keras.utils.save_img(root / name / f"{i}.png", pixels, scale=False)


def test_images_folder(tmp_path, capsys):
    write_images(tmp_path)
    data = load_dataset(f"images:{tmp_path}", batch_size=4, validation_split=0.25,
                        seed=1, image_size=(6, 5))
    # Keras's rule: int(0.25 * 12) = 3 files validate.
    assert (data.train_size, data.val_size, data.num_classes) == (9, 3, 3)
    assert data.input_shape == (6, 5, 3)
    x_train, y_train = all_examples(data.train)
    x_val, y_val = all_examples(data.val)
    x = np.concatenate([x_train, x_val])
    y = np.concatenate([y_train, y_val])
    index = np.round(x[:, 0, 0, 0] * 255) - 50 * y
    assert sorted(zip(y.tolist(), index.tolist(), strict=True)) == [(c, i) for c in range(3) for i in range(4)]
    assert np.all(x == x[:, :1, :1, :1])  # constant pictures stay constant
    assert capsys.readouterr().out == ""  # Keras's "Using N files" is silenced


def test_images_default_size_and_no_split(tmp_path):
    write_images(tmp_path, classes=("a", "b"), per_class=2)
    data = load_dataset(f"images:{tmp_path}", batch_size=2, validation_split=0)
    assert (data.input_shape, data.train_size, data.val) == ((32, 32, 3), 4, None)
    assert first_batch(data.train)[0].shape == (2, 32, 32, 3)


def test_images_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="No training images found"):
        load_dataset(f"images:{tmp_path}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"images:{tmp_path / 'nope'}")


# --- keras:NAME -----------------------------------------------------------------------


def test_keras_dataset_offline(monkeypatch):
    def offline():
        raise Exception(OFFLINE_MESSAGE)  # what keras.utils.get_file raises here

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError) as info:
        load_dataset("keras:mnist")
    message = str(info.value)
    assert "could not download keras dataset mnist; this machine seems offline" in message.lower()
    assert "use builtin:digits or npz:PATH" in message


def test_keras_dataset_cifar_shaped_arrays(monkeypatch):
    x_train = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    x_train[1, 4, 4, 2] = 255
    y_train = np.array([[0], [9], [3], [3], [1]], dtype=np.uint8)
    tiny = ((x_train, y_train), (np.zeros((3, 32, 32, 3), np.uint8), np.array([[2], [2], [5]])))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: tiny)
    data = load_dataset("keras:cifar10", batch_size=4)
    assert (data.train_size, data.val_size) == (5, 3)  # the test split validates
    assert (data.input_shape, data.num_classes) == ((32, 32, 3), 10)
    x, y = all_examples(data.train)
    assert x.shape == (5, 32, 32, 3) and y.shape == (5,) and y.dtype == np.int32
    assert x.max() == 1.0 and x.sum() == 1.0
    assert sorted(y.tolist()) == [0, 1, 3, 3, 9]


def test_keras_cifar_augment_moves_a_pixel_at_most_two_steps(monkeypatch):
    x_train = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    x_train[0, 10, 10, 2] = 255
    tiny = ((x_train, np.array([[3]])), (x_train, np.array([[3]])))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: tiny)
    data = load_dataset("keras:cifar10", augment=True, seed=4)
    rows, cols, channels = np.nonzero(first_batch(data.train)[0][0])
    # 32 px wide -> pad 2: the pixel moves within 8..12 and nothing is lost.
    assert (len(rows), channels[0]) == (1, 2)
    assert 8 <= rows[0] <= 12 and 8 <= cols[0] <= 12


def test_labels_beyond_the_class_count(monkeypatch):
    x = np.zeros((2, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(keras.datasets.mnist, "load_data",
                        lambda: ((x, np.array([1, 10])), (x, np.array([0, 1]))))
    with pytest.raises(DataError, match="below 10. Received: max_label=10"):
        load_dataset("keras:mnist")


def test_unknown_keras_dataset():
    with pytest.raises(DataError, match="mnist, fashion_mnist, cifar10, cifar100"):
        load_dataset("keras:imagenet")


# --- specs and arguments ----------------------------------------------------------------


@pytest.mark.parametrize("spec", ["digits", "tfds:mnist", "npz:", "hub:x"])
def test_unknown_scheme_lists_valid_ones(spec):
    with pytest.raises(DataError, match="builtin:, npz:, images:, keras:"):
        load_dataset(spec)


def test_unknown_builtin():
    with pytest.raises(DataError, match="expected one of digits"):
        load_dataset("builtin:iris")


@pytest.mark.parametrize("kwargs, name", [
    ({"validation_split": 1.0}, "validation_split"),
    ({"batch_size": 0}, "batch_size"),
    ({"image_size": (8,)}, "image_size"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(DataError, match=f"Received: {name}="):
        load_dataset("builtin:digits", **kwargs)


# --- check_fits -------------------------------------------------------------------------


def tiny_model(input_shape, units):
    inputs = keras.Input(input_shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(units)(x))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("builtin:digits")


def test_check_fits_passes(digits):
    check_fits(digits, tiny_model((8, 8, 1), 10))
    check_fits(digits, tiny_model((None, None, 1), 10))


def test_check_fits_input_shape_mismatch(digits):
    with pytest.raises(DataError) as info:
        check_fits(digits, tiny_model((32, 32, 3), 10))
    assert str(info.value).startswith(
        "Data does not fit the model: the model expects inputs of shape (32, 32, 3) but "
        "builtin:digits gives (8, 8, 1). Received: input_shape=(8, 8, 1) Hint: "
        "use `--input-shape 8,8,1` for zoo: models")


def test_check_fits_class_mismatch(digits):
    with pytest.raises(DataError, match="the model has 1 output units but builtin:digits "
                                        "has 10 classes. Received: num_classes=10"):
        check_fits(digits, tiny_model((8, 8, 1), 1))


def test_epochs_are_keyed_and_a_stream_without_keys_is_read_that_many_times():
    """`Dataset.epochs(start, stop)`: the epoch-keyed batches (the same whatever was
    read before), else `stop - start` passes over the stream."""
    import tensorflow as tf

    from morphcli.training.data import Dataset

    ds = load_dataset("builtin:digits", batch_size=64, validation_split=0.2, seed=0)
    first = [y.numpy() for _, y in ds.epochs(3, 4)]
    for _ in ds.train.take(5):  # the reshuffling stream is read in between
        pass
    again = [y.numpy() for _, y in ds.epochs(3, 4)]
    assert len(first) == ds.steps_per_epoch == 23  # ceil(1,438 / 64); 359 of 1,797 validate
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], [y.numpy() for _, y in ds.epochs(4, 5)][0])
    stream = Dataset(train=tf.data.Dataset.range(5).batch(2).map(lambda x: (x, x)), val=None,
                     input_shape=(1,), num_classes=2, train_size=5, val_size=0, name="s",
                     batch_size=2)
    assert [len(x) for x, _ in stream.epochs(0, 2)] == [2, 2, 1, 2, 2, 1]
