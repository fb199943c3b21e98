"""The engine: a sequence's states and the statements that move it (``transitions``),
claims and history, and what runs on those statements: starting, steering, failure and
compensation, sleeping and waiting, ForEach, recovery and schedules.

It calls RQ and Redis only through ``engine.rq``.
"""
