//! The only clock of the Workers layer: core takes time as an argument.

use worker::Date;

/// Milliseconds since the epoch (the Workers clock).
pub fn now_ms() -> u64 {
    Date::now().as_millis()
}
