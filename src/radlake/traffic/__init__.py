"""Production-like traffic against the running API (issue 11, `radlake simulate`):
real HTTP requests to POST /predict from stages of concurrent workers, and a
simulated reviewer filing feedback through the same API.

    pattern.py   the worker pattern ("1,2,3,5,3,2,1") parsed and checked
    load.py      stages, workers, timing, one record per request
    reviewer.py  matching predictions to ground truth (pure) and filing verdicts
    report.py    per-stage percentiles and the printed table
    server.py    the API in this process (uvicorn in a thread), for runs without --url
"""
