"""Vigil: anomaly detection for Prometheus and Loki series, served to Grafana."""

__version__ = "0.1.0"
__all__ = ["__version__"]
