"""Build, verify and publish PyTorch training images for Huawei Cloud ModelArts."""

__version__ = "0.1.0"
