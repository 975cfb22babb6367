"""The router's MLflow pyfunc model (``deploy.router`` builds and registers it)."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from robust_ft.deploy.router import choose


class Router(mlflow.pyfunc.PythonModel):
    """Estimate each image's distortion, run it through the model registered for it."""

    def load_context(self, context) -> None:
        import mlflow.pytorch

        self.routes = {a: tuple(v) for a, v in context.model_config["routes"].items()}
        self.estimator = mlflow.pytorch.load_model(context.artifacts["estimator"]).eval()
        self.models = {
            a: mlflow.pytorch.load_model(context.artifacts[a]).eval() for a in self.routes
        }

    def predict(self, context, model_input: np.ndarray, params=None):
        import pandas as pd
        import torch

        from robust_ft.deploy import estimator as E

        x = torch.as_tensor(np.asarray(model_input, dtype=np.uint8))
        kinds, levels, _ = E.per_image(E.log_probs(self.estimator, x))
        chosen = np.array(
            [
                choose(self.routes, E.KINDS[k], float(lv))
                for k, lv in zip(kinds, levels, strict=True)
            ]
        )
        probs = np.zeros((len(x), 0), dtype=np.float32)
        with torch.no_grad():
            for alias in np.unique(chosen):
                idx = np.flatnonzero(chosen == alias)
                p = self.models[alias](x[idx]).softmax(1).numpy()
                if probs.shape[1] == 0:
                    probs = np.zeros((len(x), p.shape[1]), dtype=np.float32)
                probs[idx] = p
        return pd.DataFrame({"class": probs.argmax(1) if len(x) else [], "route": chosen,
                             "probabilities": list(probs)})  # fmt: skip
