"""KFP pipelines (DAGs) chaining tightfit components (installed as ``tightfit.pipelines``)."""
