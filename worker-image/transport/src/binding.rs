//! Bind-device resolution (placeholder).
