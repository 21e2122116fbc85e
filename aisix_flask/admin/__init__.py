"""The admin API, the health probes, /metrics and the usage page."""
