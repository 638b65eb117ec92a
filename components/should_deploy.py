"""KFP component ``should_deploy``: the flag ``dsl.If`` tests (computed here, never on a loop item's field)."""

from kfp import dsl
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def should_deploy(found: bool, enabled: bool) -> bool:
    """Deploy only when a variant fits the target and deployment is switched on."""
    return bool(found) and bool(enabled)
