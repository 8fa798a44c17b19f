"""Training and tuning: a scaled logistic regression, C chosen by
cross-validated grid search, scored on the held-out split."""

from dataclasses import dataclass

C_GRID = (0.01, 0.1, 1.0, 10.0)


@dataclass
class Trained:
    model: "object"
    params: dict
    metrics: dict


def train(ds, c_grid=C_GRID, folds: int = 5) -> Trained:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    search = GridSearchCV(pipeline, {"logisticregression__C": list(c_grid)}, cv=folds, scoring="f1")
    search.fit(ds.x_train, ds.y_train)
    model = search.best_estimator_
    predicted = model.predict(ds.x_test)
    probability = model.predict_proba(ds.x_test)[:, 1]
    metrics = {
        "f1": float(f1_score(ds.y_test, predicted)),
        "accuracy": float(accuracy_score(ds.y_test, predicted)),
        "roc_auc": float(roc_auc_score(ds.y_test, probability)),
        "cv_f1": float(search.best_score_),
    }
    params = {"C": float(search.best_params_["logisticregression__C"]), "folds": folds}
    return Trained(model, params, metrics)


def better(candidate: dict, champion: dict | None, metric: str = "f1", margin: float = 0.0) -> bool:
    """Promote when there is no champion or the candidate beats it by more
    than `margin` on `metric`."""
    if champion is None or metric not in champion:
        return True
    return candidate[metric] > champion[metric] + margin
