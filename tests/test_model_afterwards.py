"""After a run with `TrainWatch`, the model is the user's as before: it saves,
loads, copies and pickles. (On JAX, compiled functions are kept on the models
that trainwatch checks again and again.)"""

import copy
import pickle

import keras
import numpy as np

import trainwatch


def test_a_watched_model_saves_loads_copies_and_pickles(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, size=64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    watch = trainwatch.TrainWatch(
        tmp_path / "logs",
        probe=(x[:16], y[:16]),
        verbose=0,
        images=False,
        gradient_check={"warmup_steps": 2, "wait_for_loss_drop": False},
    )
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[watch])
    assert watch.part("GradientCheck").results  # the heavy parts did run
    expected = keras.ops.convert_to_numpy(model(x[:5]))

    path = str(tmp_path / "model.keras")
    model.save(path)
    for other in (
        keras.models.load_model(path),
        copy.deepcopy(model),
        pickle.loads(pickle.dumps(model)),
    ):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(other(x[:5])), expected, rtol=1e-6
        )
