"""Development tooling, outside the product package: seeded synthetic series, an OpenMetrics
writer for backfills, and the demo workload (`vigil demo-workload`)."""
