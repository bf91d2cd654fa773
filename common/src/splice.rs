//! Byte pumping. PLACEHOLDER
