"""The training-experiment service: a budgeted queue of real training runs behind an HTTP API."""
