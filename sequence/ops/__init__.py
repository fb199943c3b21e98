"""Running it in production: the worker process, health, metrics, retention, system
checks, and the fault injection this project's own suite arms in workers."""
