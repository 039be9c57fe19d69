//! Reference model (test-only), written next.
