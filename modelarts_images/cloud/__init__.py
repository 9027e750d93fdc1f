"""Huawei Cloud: what the tool asks of ModelArts and OBS (api.py), and its implementation with Huawei's own SDKs
(sdk.py, the only code that imports them)."""
