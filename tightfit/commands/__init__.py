"""CLI command groups, one module per area; ``tightfit.cli`` collects them."""
