"""Stage 4, publish: SWR naming and login, the tag guard, push and confirmation, training-job bodies."""
