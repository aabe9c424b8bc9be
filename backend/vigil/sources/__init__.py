"""Where series come from: the Prometheus/Loki client, PromQL checks and rewriting, presets, pass-through of plain PromQL, why an answer is empty."""
