//! The original C demo's text protocol (`rendezvous --classic`). PLACEHOLDER.
