//! `glados`: the AP's command-line client for a GLADOS provider (feature
//! `cli`; see `glados --help` and README "For APs").

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    glados::cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
