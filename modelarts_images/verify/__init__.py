"""Stage 3, verify: the verification script run in the image as ModelArts runs it, and ModelArts' rules checked."""
