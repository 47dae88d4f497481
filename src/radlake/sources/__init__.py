"""Source adapters: one module per dataset layout, each reading it into records
(`radlake.pipelines.source_load` loads them)."""
