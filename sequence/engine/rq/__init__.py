"""The only code that knows RQ's job ids and key layout: queueing a unit of work
(``dispatch``) and reading RQ's registries (``registries``)."""
