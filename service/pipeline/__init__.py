"""The transport-agnostic pipeline: decode, detect, align, classify."""
