"""Each classic pathology of `examples/pathologies.py` raises its finding.

The cases train on scikit-learn's digits with the full `TrainWatch`; parts
irrelevant to a case's finding are switched off to keep the test fast (the
float64 gradient check and the first-layer images always, the sanity check
except for the initial-loss case, which needs it). Epochs are the fewest that
trigger the finding on every backend.
"""

import importlib.util
import os
import sys

import pytest

import trainwatch

_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "examples",
    "pathologies.py",
)


def _load_example():
    name = "trainwatch_example_pathologies"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


pathologies = _load_example()

# case -> epochs in the test (the fewest that trigger on all three backends)
EPOCHS = {
    "healthy": 3,
    "lr_too_high": 3,  # loss_diverging needs two rising epochs
    "lr_too_low": 3,  # loss_plateau needs three epochs and 50 steps
    "dead_relu": 1,
    "saturated_tanh": 1,
    "vanishing_gradients": 1,
    "overfitting": 6,  # raised from the third epoch: train 1.0, validation ~0.6
    "underfitting": 3,  # judged after three epochs
    "bad_initial_loss": 1,
}


def test_every_case_is_tested():
    assert set(EPOCHS) == set(pathologies.CASES)


@pytest.mark.parametrize("name", list(EPOCHS))
def test_pathology_raises_its_finding(name, tmp_path):
    case = pathologies.CASES[name](epochs=EPOCHS[name])
    watch = trainwatch.TrainWatch(
        str(tmp_path),
        probe=case.probe,
        verbose=0,
        gradient_check=False,
        images=False,
        sanity_check=name == "bad_initial_loss",
    )
    pathologies.train(case, watch)
    findings = list(watch.context.findings)
    codes = {f.code for f in findings}
    if case.expected:
        assert codes & set(case.expected), (case.expected, [str(f) for f in findings])
    else:
        loud = [str(f) for f in findings if f.severity in ("warning", "error")]
        assert not loud, loud


def test_main_prints_the_report(tmp_path, capsys):
    pathologies.main(["dead_relu", "--log-dir", str(tmp_path), "--epochs", "1"])
    out = capsys.readouterr().out
    assert "dead_units" in out
