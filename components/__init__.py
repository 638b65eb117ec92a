"""KFP v2 components: thin wrappers over the tightfit library (installed as ``tightfit.components``)."""
