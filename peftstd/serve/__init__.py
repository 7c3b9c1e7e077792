"""`peftstd serve`: exported models as a batched, authenticated HTTP service (FastAPI + uvicorn), on the
predictors of `peftstd.runtime`. Our JSON API under /v1, KServe's Open Inference Protocol (V2) under /v2."""
