"""Mechanics every stage uses: retries, redaction of secrets, text formatting, files replaced whole."""
