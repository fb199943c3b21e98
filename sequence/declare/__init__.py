"""What a user writes: steps and sequences, plan items, retry policies, cron, settings,
the errors raised at them, and the registry of declared sequences.

The bottom room: it imports nothing else of the package but ``sequence.models``'s
statuses, so a definition can be read without the engine.
"""
