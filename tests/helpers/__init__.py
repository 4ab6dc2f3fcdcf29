"""Test helpers: tiny models generated on the fly."""
