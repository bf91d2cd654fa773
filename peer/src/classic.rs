//! The original C demo's client (`peer --classic`). PLACEHOLDER.
