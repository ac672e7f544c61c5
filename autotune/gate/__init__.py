"""The CI regression gate: a checkpoint's evaluation against a baseline, entry by entry, by a paired
bootstrap over the same documents."""
