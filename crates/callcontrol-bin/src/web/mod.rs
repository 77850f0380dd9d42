//! The HTTP interface: JSON API, Prometheus metrics and the sessions page.
