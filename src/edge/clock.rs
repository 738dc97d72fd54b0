//! The only clock of the Workers layer: core takes time as an argument.

use std::cell::Cell;

thread_local! {
    /// How far this isolate's clock runs ahead of the Workers clock. Only
    /// the local-only test route `POST /__debug/clock` moves it, so a test
    /// can let a code expire or a filter come due without changing any
    /// setting the product runs with; it is always 0 on a deployed GP.
    static AHEAD_MS: Cell<u64> = const { Cell::new(0) };
}

/// Milliseconds since the epoch (the Workers clock). `Date.now()` itself:
/// workers-rs's `Date::now()` allocates a JS `Date` first, and a query reads
/// the clock several times.
pub fn now_ms() -> u64 {
    (js_sys::Date::now() as u64).saturating_add(AHEAD_MS.with(Cell::get))
}

/// Moves this isolate's clock ahead by `ms` (test route only); the new time.
pub fn advance(ms: u64) -> u64 {
    AHEAD_MS.with(|a| a.set(a.get().saturating_add(ms)));
    now_ms()
}
