"""The one container image every tightfit component runs in (the Dockerfile and Helm chart build/use it)."""

from tightfit.settings import DEFAULT_IMAGE

TIGHTFIT_IMAGE: str = DEFAULT_IMAGE
"""Image name and tag, e.g. ``ghcr.io/tightfit/tightfit:0.1.0-cpu`` (same constant as the chart's)."""
