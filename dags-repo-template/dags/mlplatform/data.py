"""The dataset: scikit-learn's breast cancer data (569 samples, 30 features,
shipped with scikit-learn, no download), and the checks it must pass before
anything trains on it."""

from dataclasses import dataclass

SEED = 42
EXPECTED_FEATURES = 30


@dataclass
class Dataset:
    x_train: "object"
    x_test: "object"
    y_train: "object"
    y_test: "object"
    feature_names: list


def load(test_size: float = 0.25) -> Dataset:
    """The same split on every call (fixed seed), so tasks on different
    workers agree on it without passing data through XCom."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=test_size, random_state=SEED, stratify=bunch.target
    )
    return Dataset(x_train, x_test, y_train, y_test, list(bunch.feature_names))


class DataValidationError(ValueError):
    pass


def validate(ds: Dataset) -> dict:
    """Shape, missing values and class balance; raises with what is wrong."""
    import numpy as np

    problems = []
    if ds.x_train.shape[1] != EXPECTED_FEATURES:
        problems.append(f"expected {EXPECTED_FEATURES} features, got {ds.x_train.shape[1]}")
    for name, part in (("x_train", ds.x_train), ("x_test", ds.x_test)):
        missing = int(np.isnan(part).sum())
        if missing:
            problems.append(f"{name} has {missing} missing values")
    positive = float(np.mean(ds.y_train))
    if not 0.2 <= positive <= 0.8:
        problems.append(f"class balance {positive:.2f} is outside 0.2..0.8")
    if len(ds.y_test) < 50:
        problems.append(f"only {len(ds.y_test)} test samples")
    if problems:
        raise DataValidationError("; ".join(problems))
    return {
        "train_rows": int(ds.x_train.shape[0]),
        "test_rows": int(ds.x_test.shape[0]),
        "features": int(ds.x_train.shape[1]),
        "positive_rate": round(positive, 4),
    }
