"""Where anomalies go: Alertmanager alerts and Grafana annotations (the Sink protocol and its implementations)."""
