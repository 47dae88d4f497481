"""Prefect flows and schedules wrapping `radlake.pipelines` (issue 12, orchestration).

    cron.py       cron strings checked without Prefect (config.py validates schedules)
    tasks.py      Prefect tasks: I/O steps retried on faults only, pure steps never
    flows.py      one flow per pipeline, taking plain arguments, run by name
    schedules.py  deployments built from RADLAKE_SCHEDULE_* and `serve`

Prefect is imported by tasks.py, flows.py and schedules.py only (and lazily by the
`radlake flows` command): importing this package or `cron` costs nothing, and a lake
without the [flows] extra never needs Prefect.
"""
