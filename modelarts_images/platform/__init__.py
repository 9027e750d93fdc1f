"""Verification on ModelArts itself: the job's code on OBS, a flavour, the training job, its phases, its log."""
