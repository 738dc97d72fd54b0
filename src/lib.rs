//! GLADOS provider: a pure protocol core plus thin Workers and browser glue.
pub mod core;
