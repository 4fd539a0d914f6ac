"""Speculation: draft trees, tree masks, tree policy, drafting (model and heads), verification."""
