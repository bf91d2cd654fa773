//! Simultaneous open. PLACEHOLDER
