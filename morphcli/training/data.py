"""Datasets as `tf.data` pipelines, chosen by a spec string such as ``builtin:digits``.

Sources: ``builtin:digits`` (the default: scikit-learn's handwritten digits ship
inside an installed package, so the default job and the tests never download,
and 1,797 8x8 images train in seconds on 2 CPU cores), ``npz:PATH``,
``images:DIR`` (one subfolder per class) and ``keras:NAME``.

Every source ends in the same pipeline: pixels scaled to [0, 1] as float32,
integer labels as int32, the training set shuffled (seeded), optionally
augmented, batched and prefetched; the validation set batched and prefetched.

Validation split rule (builtin and npz without ``x_val``): permute the indices
with ``numpy.random.RandomState(seed).permutation``; for each class, the first
``floor(n_class * validation_split + 0.5)`` of its members in that order go to
validation, the rest to training. ``images:DIR`` uses Keras's own rule (after
a seeded shuffle of the file list, the last ``int(validation_split * N)`` files
validate). ``keras:NAME`` and npz files with ``x_val`` use the given
test/validation arrays and ignore ``validation_split``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from morphcli.errors import DataError
from morphcli.training.arrays import as_examples as _as_examples
from morphcli.training.arrays import as_labels as _as_labels
from morphcli.training.arrays import check_lengths as _check_lengths

if TYPE_CHECKING:
    import tensorflow as tf

DEFAULT_SPEC = "builtin:digits"
SCHEMES = ("builtin", "npz", "images", "keras")
BUILTIN_DATASETS = ("digits",)
# Class counts of the Keras datasets, so a small or partial download still
# gives the model the right number of output units.
KERAS_DATASETS = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
# `images:DIR` needs one size for every picture; 32x32 is CIFAR's size, large
# enough for small photos and cheap enough to train on 2 CPU cores.
DEFAULT_IMAGE_SIZE = (32, 32)


@dataclasses.dataclass
class Dataset:
    """A training pipeline and its facts, as returned by `load_dataset`.

    Attributes:
        train: Batched, shuffled (seeded), prefetched `(x, y)` pairs;
            `x` float32 in [0, 1], `y` int32 class indices.
        val: Batched, prefetched, unshuffled pairs, or `None` without validation.
        input_shape: Shape of one example, e.g. `(8, 8, 1)`.
        num_classes: Number of classes (the model's output units).
        train_size: Number of training examples.
        val_size: Number of validation examples (0 without validation).
        name: The spec the data came from, e.g. `"builtin:digits"`.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset | None
    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    val_size: int
    name: str
    # `train_epochs(start, stop)`: the batches of epochs start..stop-1 in a row,
    # each epoch's order (and augmentation) a pure function of (seed, epoch), so a
    # run resumed at epoch k sees exactly the batches an uninterrupted run sees.
    # None for sources that stream from files (images:DIR).
    train_epochs: Callable[[int, int], tf.data.Dataset] | None = None
    batch_size: int = 0
    # The selection split: training examples held out (never trained on) so that
    # choices (`best`, the search) are not made on the validation data reported.
    select: tf.data.Dataset | None = None
    select_size: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train_size // self.batch_size) if self.batch_size else 0

    def epochs(self, start: int, stop: int) -> tf.data.Dataset:
        """The training batches of epochs `start`..`stop - 1`: in their epoch-keyed
        order when the source has one, so what a caller draws does not depend on
        what was drawn before it in the process (`train` reshuffles at every read);
        else that many passes over `train`."""
        if self.train_epochs is not None:
            return self.train_epochs(start, stop)
        return self.train.repeat(stop - start)


@dataclasses.dataclass
class _Options:
    """The `load_dataset` keyword arguments, passed on to the loaders."""

    batch_size: int
    validation_split: float
    seed: int
    shuffle_buffer: int
    image_size: tuple[int, int] | None
    augment: bool
    input_rank: int | None = None
    selection_split: float = 0.0


def load_dataset(spec: str = DEFAULT_SPEC, *, batch_size: int = 64,
                 validation_split: float = 0.2, seed: int = 0, shuffle_buffer: int = 10_000,
                 image_size: tuple[int, int] | None = None, augment: bool = False,
                 input_rank: int | None = None, selection_split: float = 0.0) -> Dataset:
    """Load a dataset named by a spec string into `tf.data` pipelines.

    Args:
        spec: `"builtin:digits"`, `"npz:PATH"`, `"images:DIR"` or `"keras:NAME"`
            (NAME one of mnist, fashion_mnist, cifar10, cifar100).
        batch_size: Examples per batch.
        validation_split: Fraction held out for validation when the source has
            no validation set of its own (see the module docstring for the rule);
            0 means no validation set.
        seed: Seed of the split, the shuffle and the augmentation.
        shuffle_buffer: Size of the training shuffle buffer (`images:` sources
            shuffle their file list instead).
        image_size: `(height, width)` to resize images to; by default images keep
            their size (`images:DIR` uses `DEFAULT_IMAGE_SIZE`).
        augment: Randomly shift training images by 1 px (2 px when at least
            16 px wide) with zero padding; no flips, so digits stay readable.
        input_rank: Axes of one example the model takes (3 for images
            `(H, W, C)`, 2 for 1-D signals `(length, channels)`, 1 for
            vectors). Arrays with one axis less get a channel axis of 1; by
            default only `(N, H, W)` arrays do.
        selection_split: Fraction of the training examples (after validation
            is split off) held out as the selection split, by the same
            class-by-class rule with seed `seed + 1`; 0: none. `images:DIR`
            sources have none.

    Returns:
        A `Dataset`.

    Raises:
        DataError: If the spec, a file or an argument is wrong, or a download fails.

    Example:

    >>> data = load_dataset("builtin:digits", batch_size=32)
    >>> data.input_shape, data.train_size, data.val_size
    ((8, 8, 1), 1438, 359)
    """
    options = _Options(batch_size, validation_split, seed, shuffle_buffer,
                       _check_image_size(image_size), augment, input_rank, selection_split)
    _check_options(options)
    scheme, _, arg = spec.partition(":")
    if scheme not in _LOADERS or not arg:
        raise DataError(
            f"Unknown data source: expected one of {', '.join(s + ':' for s in SCHEMES)} "
            f"followed by a name or path. Received: spec={spec!r}",
            hint="the default is builtin:digits")
    return _LOADERS[scheme](arg, spec, options)


def split_indices(labels: np.ndarray, validation_split: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into training and validation, class by class.

    Args:
        labels: Integer class per example, shape `(N,)`.
        validation_split: Fraction of each class to put in validation.
        seed: Seed of the `numpy.random.RandomState` permutation.

    Returns:
        `(train_indices, val_indices)`, each sorted ascending. Class `c` with
        `n_c` examples gives `floor(n_c * validation_split + 0.5)` to validation.

    Example:

    >>> train, val = split_indices(np.array([0, 0, 0, 0, 1, 1]), 0.5, seed=0)
    >>> len(train), len(val)
    (3, 3)
    """
    order = np.random.RandomState(seed).permutation(len(labels))
    val_parts = [np.zeros(0, dtype=np.int64)]
    for label in np.unique(labels):
        members = order[labels[order] == label]
        val_parts.append(members[:math.floor(len(members) * validation_split + 0.5)])
    val = np.sort(np.concatenate(val_parts))
    return np.setdiff1d(np.arange(len(labels)), val), val


def check_fits(dataset: Dataset, model: Any) -> None:
    """Check, before training, that a dataset's examples and classes fit a model.

    Args:
        dataset: The `Dataset` to feed.
        model: A Keras model with one input and a class-score output; `None`
            dimensions of the model's input match any size.

    Raises:
        DataError: If the example shape differs from the model's input shape,
            or the number of classes from the model's output units.
    """
    expected = tuple(model.inputs[0].shape[1:])
    given = dataset.input_shape
    if len(expected) != len(given) or any(
            e not in (None, g) for e, g in zip(expected, given, strict=True)):
        shown = ",".join(str(d) for d in given)
        raise DataError(
            f"Data does not fit the model: the model expects inputs of shape {expected} "
            f"but {dataset.name} gives {given}. Received: input_shape={given}",
            hint=f"use `--input-shape {shown}` for zoo: models, or resize the data "
                 "with `data.image_size`")
    units = model.outputs[0].shape[-1]
    if units is not None and units != dataset.num_classes:
        raise DataError(
            f"Data does not fit the model: the model has {units} output units but "
            f"{dataset.name} has {dataset.num_classes} classes. "
            f"Received: num_classes={dataset.num_classes}",
            hint=f"the model's last layer needs {dataset.num_classes} units, one per class")


# --- argument checks -------------------------------------------------------


def _check_image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(d, int) and d > 0 for d in size):
        raise DataError(f"`image_size` must be two positive integers (height, width). "
                        f"Received: image_size={image_size!r}")
    return size


def _check_options(options: _Options) -> None:
    if not isinstance(options.batch_size, int) or options.batch_size < 1:
        raise DataError(f"`batch_size` must be a positive integer. "
                        f"Received: batch_size={options.batch_size!r}")
    if not 0 <= options.selection_split < 1:
        raise DataError(f"`selection_split` must be in [0, 1). "
                        f"Received: selection_split={options.selection_split!r}")
    if not 0 <= options.validation_split < 1:
        raise DataError(f"`validation_split` must be in [0, 1). "
                        f"Received: validation_split={options.validation_split!r}")


# --- sources ------------------------------------------------------------------


def _load_builtin(name: str, spec: str, options: _Options) -> Dataset:
    if name not in BUILTIN_DATASETS:
        raise DataError(f"Unknown built-in dataset: expected one of {', '.join(BUILTIN_DATASETS)}. "
                        f"Received: spec={spec!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[..., np.newaxis]
    # Digit pixels are counts 0..16 (4x4 blocks of a 32x32 bitmap).
    return _from_arrays(spec, x, digits.target, None, None, options,
                        scale=1 / 16, num_classes=len(digits.target_names))


def _load_npz(path: str, spec: str, options: _Options) -> Dataset:
    if not Path(path).is_file():
        raise DataError(f"The npz file does not exist. Received: path={path!r}")
    try:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        reason = "it is empty or cut short" if isinstance(err, EOFError | zipfile.BadZipFile) \
            else " ".join(str(err).split())[:160]
        raise DataError(f"Could not read the npz file: {reason}. Received: path={path!r}",
                        hint="write it with numpy.savez(path, x_train=..., y_train=...)") from None
    for key in ("x_train", "y_train"):
        _require_key(arrays, key, path)
    if ("x_val" in arrays) != ("y_val" in arrays):
        _require_key(arrays, "y_val" if "x_val" in arrays else "x_val", path)
    x_train, x_val = arrays["x_train"], arrays.get("x_val")
    scale = 1 / 255 if x_train.dtype == np.uint8 else 1.0
    return _from_arrays(spec, x_train, arrays["y_train"], x_val, arrays.get("y_val"),
                        options, scale=scale)


def _require_key(arrays: dict[str, np.ndarray], key: str, path: str) -> None:
    if key not in arrays:
        raise DataError(f"The npz file has no array `{key}`: expected x_train, y_train and "
                        f"optionally x_val, y_val. Received: keys={sorted(arrays)} in {path}")


def _load_keras(name: str, spec: str, options: _Options) -> Dataset:
    if name not in KERAS_DATASETS:
        raise DataError(f"Unknown Keras dataset: expected one of {', '.join(KERAS_DATASETS)}. "
                        f"Received: spec={spec!r}")
    import keras

    # Keras writes its download progress to stdout, which belongs to our data output.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            (x_train, y_train), (x_val, y_val) = getattr(keras.datasets, name).load_data()
    except Exception as err:  # Keras wraps every download failure in a bare Exception.
        offline = "URL fetch failure" in str(err) or isinstance(err, OSError)
        reason = "this machine seems offline" if offline else str(err)
        raise DataError(f"Could not download keras dataset {name}; {reason}. "
                        f"Received: spec={spec!r}",
                        hint="use builtin:digits or npz:PATH") from err
    return _from_arrays(spec, x_train, y_train, x_val, y_val, options,
                        scale=1 / 255, num_classes=KERAS_DATASETS[name])


def _load_images(directory: str, spec: str, options: _Options) -> Dataset:
    import keras

    if not Path(directory).is_dir():
        raise DataError(f"The image folder does not exist. Received: path={directory!r}")
    split = options.validation_split or None
    # Keras prints "Using N files for training." even with verbose=False.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            loaded = keras.utils.image_dataset_from_directory(
                directory, batch_size=None, image_size=options.image_size or DEFAULT_IMAGE_SIZE,
                validation_split=split, subset="both" if split else None,
                seed=options.seed, verbose=False)
        except ValueError as err:
            raise DataError(f"Could not read images: {err}. Received: path={directory!r}",
                            hint="put each class's images (png, jpg, bmp, gif) "
                                 "in its own subfolder") from err
    train, val = loaded if split else (loaded, None)
    num_classes = len(train.class_names)
    val_size = len(val.file_paths) if val is not None else 0
    input_shape = tuple(int(d) for d in train.element_spec[0].shape)
    # Keras already shuffles the file list each epoch, so no shuffle buffer here.
    pipe_options = dataclasses.replace(options, shuffle_buffer=0, image_size=None)
    return Dataset(
        train=_pipeline(train, pipe_options, scale=1 / 255, training=True),
        val=_pipeline(val, pipe_options, scale=1 / 255, training=False) if val_size else None,
        input_shape=input_shape, num_classes=num_classes,
        train_size=len(train.file_paths), val_size=val_size, name=spec)


_LOADERS = {"builtin": _load_builtin, "npz": _load_npz, "images": _load_images,
            "keras": _load_keras}


# --- arrays to pipelines -------------------------------------------------------


def _from_arrays(spec: str, x_train: np.ndarray, y_train: np.ndarray,
                 x_val: np.ndarray | None, y_val: np.ndarray | None, options: _Options,
                 *, scale: float, num_classes: int | None = None) -> Dataset:
    """Turn arrays into a `Dataset`, splitting off validation if none is given."""
    if num_classes is None and y_train.ndim == 2 and y_train.shape[1] > 1:
        num_classes = y_train.shape[1]  # one-hot rows
    x_train, y_train = _as_examples(x_train, "x_train", options.input_rank), _as_labels(y_train, "y_train")
    _check_lengths(x_train, y_train, "train", spec)
    if x_val is None and options.validation_split > 0:
        train_idx, val_idx = split_indices(y_train, options.validation_split, options.seed)
        x_train, y_train, x_val, y_val = (x_train[train_idx], y_train[train_idx],
                                          x_train[val_idx], y_train[val_idx])
    elif x_val is not None:
        x_val, y_val = _as_examples(x_val, "x_val", options.input_rank), _as_labels(y_val, "y_val")
        _check_lengths(x_val, y_val, "val", spec)
        if x_val.shape[1:] != x_train.shape[1:]:
            raise DataError(f"Validation examples must have the training shape "
                            f"{x_train.shape[1:]}. Received: x_val.shape={x_val.shape}")
    x_select = y_select = None
    if options.selection_split > 0:
        train_idx, select_idx = split_indices(y_train, options.selection_split, options.seed + 1)
        x_train, y_train, x_select, y_select = (x_train[train_idx], y_train[train_idx],
                                                x_train[select_idx], y_train[select_idx])
        if not len(x_train):
            raise DataError("The selection split leaves no training examples. "
                            f"Received: selection_split={options.selection_split!r} in {spec}")
    labels = np.concatenate([y for y in (y_train, y_val, y_select) if y is not None])
    num_classes = num_classes or int(labels.max()) + 1
    if labels.max() >= num_classes:
        raise DataError(f"Labels must be class indices below {num_classes}. "
                        f"Received: max_label={labels.max()} in {spec}")
    if (options.image_size or options.augment) and x_train.ndim != 4:
        raise DataError(f"`image_size` and `augment` need images, not vectors. "
                        f"Received: x_train.shape={x_train.shape}")
    input_shape = tuple(int(d) for d in x_train.shape[1:])
    if options.image_size:
        input_shape = (*options.image_size, input_shape[-1])
    has_val = x_val is not None and len(x_val) > 0
    has_select = x_select is not None and len(x_select) > 0
    return Dataset(
        train=_pipeline(_slices(x_train, y_train), options, scale=scale, training=True),
        val=_pipeline(_slices(x_val, y_val), options, scale=scale, training=False)
        if has_val else None,
        input_shape=input_shape, num_classes=num_classes, train_size=len(x_train),
        val_size=len(x_val) if has_val else 0, name=spec,
        train_epochs=_epoch_keyed(x_train, y_train, options, scale),
        batch_size=options.batch_size,
        select=_pipeline(_slices(x_select, y_select), options, scale=scale, training=False)
        if has_select else None, select_size=len(x_select) if has_select else 0)


def _slices(x: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y))


def _pipeline(ds: tf.data.Dataset, options: _Options, *, scale: float,
              training: bool) -> tf.data.Dataset:
    """Shuffle and augment (training only), batch, scale to float32, resize, prefetch."""

    if training and options.shuffle_buffer > 0:
        ds = ds.shuffle(options.shuffle_buffer, seed=options.seed,
                        reshuffle_each_iteration=True)
    if training and options.augment:
        ds = _augment(ds, options.seed)
    return _finish(ds.batch(options.batch_size), options, scale)


def _epoch_keyed(x: np.ndarray, y: np.ndarray, options: _Options,
                 scale: float) -> Callable[[int, int], tf.data.Dataset]:
    """`(start, stop) -> batches of those epochs`, reproducible per epoch."""

    def epochs(start: int, stop: int) -> tf.data.Dataset:
        import tensorflow as tf

        images, labels = tf.constant(x), tf.constant(y)
        height, width = (x.shape[1], x.shape[2]) if x.ndim == 4 else (0, 0)
        pad = 1 if min(height, width) < 16 else 2

        def one_epoch(epoch):
            key = tf.stack([tf.constant(options.seed, tf.int64), epoch])
            order = tf.random.experimental.stateless_shuffle(tf.range(len(x), dtype=tf.int64),
                                                            seed=key)

            def example(i):
                image = tf.gather(images, i)
                if options.augment:
                    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
                    image = tf.image.stateless_random_crop(
                        padded, tf.shape(image), seed=tf.stack([epoch * 1_000_003 + i, key[0]]))
                return image, tf.gather(labels, i)

            # Batch inside the epoch, so no batch straddles two epochs.
            return tf.data.Dataset.from_tensor_slices(order).map(example).batch(
                options.batch_size)

        ds = tf.data.Dataset.range(start, stop).flat_map(one_epoch)
        return _finish(ds, options, scale)

    return epochs


def _finish(ds: tf.data.Dataset, options: _Options, scale: float) -> tf.data.Dataset:
    import tensorflow as tf

    def finish(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(x, tf.float32) * scale
        if options.image_size:
            x = tf.image.resize(x, options.image_size)
        return x, y

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _augment(ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Shift each image by a random whole number of pixels, zero-filling the edge.

    Each example gets a stateless seed from a seeded random stream, so the
    shifts are the same for the same seed and differ from epoch to epoch.
    """
    import tensorflow as tf

    height, width, channels = ds.element_spec[0].shape
    pad = 1 if min(height, width) < 16 else 2
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def shift(example: tuple[tf.Tensor, tf.Tensor], pair: tf.Tensor):
        x, y = example
        padded = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]])
        return tf.image.stateless_random_crop(padded, [height, width, channels], seed=pair), y

    return tf.data.Dataset.zip((ds, seeds)).map(shift, num_parallel_calls=tf.data.AUTOTUNE)
