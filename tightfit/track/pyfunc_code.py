"""The pyfunc model-from-code entry: MLflow copies this file into the model and runs it when loading.

Nothing is pickled: the model is ``VariantPyfunc``, which loads the variant directory artifact with
``tightfit.load_variant``.
"""

import mlflow

from tightfit.track.flavor import VariantPyfunc

mlflow.models.set_model(VariantPyfunc())
