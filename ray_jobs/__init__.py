"""Ray job entrypoints: fine-tuning (Ray Train) and serving (Ray Serve) (installed as ``tightfit.ray_jobs``)."""
