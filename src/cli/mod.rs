//! `glados`, the AP's command-line client for a GLADOS provider (feature
//! `cli`, native only; the binary is `src/bin/glados.rs`).
//!
//! Everything the GP also decides is decided here by the same core code:
//! SII normalization ([`crate::core::sii`]), the bulk line format
//! ([`crate::core::bulk`]) and Standard Webhooks verification
//! ([`crate::core::webhook`]). So input the GP would refuse is refused
//! locally, before any request, with the GP's own problem title and detail.
//! The rest: [`client`] (HTTP, TLS and tokens), [`config`] (settings),
//! [`bulk`] (resumable bulk upload), [`listen`] (webhook receiver).

pub mod bulk;
pub mod client;
pub mod config;
pub mod error;
pub mod listen;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::core::creation::Handle;
use crate::core::query::QueryError;
use crate::core::sii::Sii;
use crate::core::ssi::UserId;
use client::{clean, Body, Client};
use config::Settings;
use error::Failure;

const EXIT_CODES: &str = "\
Exit codes: 0 done · 1 bulk upload finished with refused lines · 2 usage or bad input (refused \
locally, nothing sent) · 3 authentication/authorization (credentials, client certificate, \
suspended, not allowed) · 4 other 4xx from the GP · 5 GP failed (5xx) or unreachable.

Settings come from flags, then GLADOS_* environment variables, then the config file written by \
`glados login` (~/.config/glados/config.toml, or GLADOS_CONFIG).";

/// The AP's client for a GLADOS provider (draft-rosenberg-mimi-glados).
#[derive(Debug, Parser)]
#[command(name = "glados", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    /// Machine-readable output: the GP's JSON answer (or problem) on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the GP is and who we are.
#[derive(Debug, Args)]
struct ConnArgs {
    /// The GP's base URL.
    #[arg(long, global = true, env = "GLADOS_GP", value_name = "URL")]
    gp: Option<String>,
    /// The AP's client id (its provider id).
    #[arg(long, global = true, env = "GLADOS_CLIENT_ID", value_name = "ID")]
    client_id: Option<String>,
    /// The AP's client secret.
    #[arg(
        long,
        global = true,
        env = "GLADOS_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    client_secret: Option<String>,
    /// Client certificate (PEM, chain) for mutual TLS.
    #[arg(long, global = true, env = "GLADOS_CERT", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "GLADOS_KEY", value_name = "PEM")]
    key: Option<PathBuf>,
    /// Trust these root certificates (PEM) for the GP instead of the
    /// built-in Mozilla roots.
    #[arg(long, global = true, env = "GLADOS_CA", value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Config file [default: $GLADOS_CONFIG, ~/.config/glados/config.toml].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds one request may take.
    #[arg(long, global = true, default_value_t = 60, value_name = "SECONDS")]
    timeout: u64,
}

impl ConnArgs {
    fn given(&self) -> Settings {
        Settings {
            gp: self.gp.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
        }
    }

    fn config_path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(config::default_path)
    }

    /// Flags and env, then the config file.
    fn settings(&self) -> Result<Settings, Failure> {
        let file = match self.config_path() {
            Some(p) => config::load(&p)?,
            None => Settings::default(),
        };
        Ok(self.given().or(file))
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check the settings given (flags or env) against the GP and save
    /// them in the config file.
    Login,
    /// Show this AP as the GP sees it (id, bulk permission, rate, token).
    Me,
    /// Print a fresh access token (for curl: -H "Authorization: Bearer …").
    Token,
    /// The preferred messaging service of an SII (draft §8.1).
    Query {
        /// Phone number (+14155550100) or email address.
        sii: String,
    },
    /// Start a mapping: the GP sends the user a code (draft §8.2).
    Create {
        /// Phone number or email address.
        sii: String,
        /// Your id for the user.
        user: String,
    },
    /// Confirm a mapping with the code the user typed.
    Confirm {
        /// The handle `glados create` printed.
        handle: String,
        /// The code.
        code: String,
    },
    /// After a conflict (§8.2.1): replace the other app's mapping or prefer yours.
    Choose {
        #[arg(value_enum)]
        choice: ChoiceArg,
        /// Phone number or email address.
        sii: String,
    },
    /// Delete your mapping of an SII.
    Delete {
        /// Phone number or email address.
        sii: String,
    },
    /// Your own mapping of an SII, and whether another app is preferred.
    Mine {
        /// Phone number or email address.
        sii: String,
    },
    /// Undo another app's take-over of your user's SII (§8.2.1 remedies).
    Remedy {
        #[arg(value_enum)]
        remedy: RemedyArg,
        /// Phone number or email address.
        sii: String,
    },
    /// Register many mappings from an NDJSON or CSV file, resumably (§8.3).
    Bulk(bulk::BulkArgs),
    /// Webhook tools.
    Webhooks {
        #[command(subcommand)]
        cmd: WebhooksCmd,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ChoiceArg {
    Replace,
    Prefer,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RemedyArg {
    Reestablish,
    PreferBack,
    Report,
}

impl RemedyArg {
    fn path(self) -> &'static str {
        match self {
            RemedyArg::Reestablish => "/v1/mappings/reestablish",
            RemedyArg::PreferBack => "/v1/mappings/prefer-back",
            RemedyArg::Report => "/v1/mappings/report",
        }
    }
}

#[derive(Debug, Subcommand)]
enum WebhooksCmd {
    /// Receive webhooks locally, verify each and print it.
    Listen(listen::ListenArgs),
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 2,
            });
        }
    };
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => error::report(&f, cli.json),
    }
}

/// The SII as the GP reads it, or the GP's problem for it.
fn sii(s: &str) -> Result<Sii, Failure> {
    Sii::parse(s).map_err(|e| Failure::local(&e))
}

fn text(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .map(clean)
        .unwrap_or_default()
}

/// `provider (name, gp x)` for a §8.2.1 party.
fn party(p: &Value) -> Option<String> {
    let provider = p.get("provider")?.as_str()?;
    let mut s = clean(provider);
    let name = text(p, "name");
    let gp = text(p, "gp");
    match (name.is_empty(), gp.is_empty()) {
        (true, true) => {}
        (false, true) => s.push_str(&format!(" ({name})")),
        (true, false) => s.push_str(&format!(" (on {gp})")),
        (false, false) => s.push_str(&format!(" ({name}, on {gp})")),
    }
    Some(s)
}

fn run(cli: &Cli) -> Result<u8, Failure> {
    // Local checks first: bad input is refused before any request.
    let body = match &cli.cmd {
        Cmd::Query { sii: s } => Some(json!({
            "sii": Sii::parse(s).map_err(|e| Failure::local(&QueryError::InvalidSii(e)))?.as_str()
        })),
        Cmd::Create { sii: s, user } => {
            let sii = sii(s)?;
            let user = UserId::parse(user).map_err(|e| Failure::local(&e))?;
            Some(json!({ "sii": sii.as_str(), "user": user.as_str() }))
        }
        Cmd::Confirm { handle, code } => {
            // The shape only: the GP checks the shard against its count.
            Handle::parse(handle, u32::MAX).map_err(|e| Failure::local(&e))?;
            Some(json!({ "code": code.trim() }))
        }
        Cmd::Choose { choice, sii: s } => Some(json!({
            "sii": sii(s)?.as_str(),
            "choice": match choice { ChoiceArg::Replace => "replace", ChoiceArg::Prefer => "prefer" },
        })),
        Cmd::Delete { sii: s } | Cmd::Mine { sii: s } | Cmd::Remedy { sii: s, .. } => {
            Some(json!({ "sii": sii(s)?.as_str() }))
        }
        _ => None,
    };
    if let Cmd::Webhooks {
        cmd: WebhooksCmd::Listen(args),
    } = &cli.cmd
    {
        return listen::run(args, cli.json);
    }
    let settings = cli.conn.settings()?;
    let timeout = Duration::from_secs(cli.conn.timeout.max(1));
    if let Cmd::Bulk(args) = &cli.cmd {
        if args.dry_run {
            let ap = settings.client_id.clone().unwrap_or_default();
            return bulk::run(None, &ap, "", args, cli.json);
        }
        let client = Client::new(&settings, timeout)?;
        let (ap, gp) = (client.client_id().to_owned(), client.base().to_owned());
        return bulk::run(Some(&client), &ap, &gp, args, cli.json);
    }
    let client = Client::new(&settings, timeout)?;
    let post = |path: &str| -> Result<Value, Failure> {
        let b = body.as_ref().unwrap_or(&Value::Null);
        client.call("POST", path, Body::Json(b))
    };
    let (out, line) = match &cli.cmd {
        Cmd::Login => {
            let me = client.call("GET", "/v1/me", Body::None)?;
            let path = cli.conn.config_path().ok_or_else(|| {
                Failure::Usage("no config file path: set HOME or pass --config".into())
            })?;
            let mut s = settings.clone();
            s.cert = config::absolute(s.cert);
            s.key = config::absolute(s.key);
            s.ca = config::absolute(s.ca);
            config::save(&path, &s)?;
            let line = format!(
                "logged in to {} as {}; settings saved to {}",
                client.base(),
                text(&me, "id"),
                path.display()
            );
            (me, line)
        }
        Cmd::Me => {
            let me = client.call("GET", "/v1/me", Body::None)?;
            let mtls = if me["token"]["cnf"].is_object() {
                ", token bound to the client certificate"
            } else {
                ""
            };
            let line = format!(
                "{} ({}) on {}: {} enrolled users, {} strikes, bulk {}{mtls}",
                text(&me, "id"),
                text(&me, "name"),
                client.base(),
                me["enrolled_users"],
                me["strikes"],
                if me["bulk_allowed"] == true {
                    "allowed"
                } else {
                    "not allowed"
                },
            );
            (me, line)
        }
        Cmd::Token => {
            let t = client.token(false)?;
            (json!({ "access_token": t }), t)
        }
        Cmd::Query { .. } => {
            let r = post("/v1/query")?;
            let sii = text(&r, "sii");
            let mut line = if r["found"] == true {
                let ssi = &r["ssi"];
                format!(
                    "{sii} → {}:{} (gp {}{})",
                    text(ssi, "provider"),
                    text(ssi, "user"),
                    text(&r, "gp"),
                    if r["home"] == true { ", this GP" } else { "" }
                )
            } else {
                format!("{sii}: no mapping")
            };
            if r["incomplete"] == true {
                let failed: Vec<String> = r["failed_peers"]
                    .as_array()
                    .map(|a| a.iter().map(|p| text(p, "gp")).collect())
                    .unwrap_or_default();
                line.push_str(&format!(
                    " (incomplete: {} did not answer; a newer mapping may exist there)",
                    failed.join(", ")
                ));
            }
            (r, line)
        }
        Cmd::Create { .. } => {
            let r = post("/v1/mappings")?;
            let mut line = format!(
                "{} sent by {} (expires in {} s); confirm with: glados confirm {} CODE",
                if r["sent"] == false {
                    "code already"
                } else {
                    "code"
                },
                text(&r, "channel"),
                r["expires_in"],
                text(&r, "handle")
            );
            if let Some(p) = party(&r["existing"]) {
                line.push_str(&format!(
                    "; already mapped by {p}: after confirming, `glados choose replace|prefer SII`"
                ));
            }
            (r, line)
        }
        Cmd::Confirm { handle, .. } => {
            let r = client.call(
                "POST",
                &format!("/v1/verifications/{handle}"),
                Body::Json(body.as_ref().unwrap_or(&Value::Null)),
            )?;
            let m = &r["mapping"];
            let mut line = format!("mapped {}", mapping_line(m));
            if let Some(p) = party(&r["existing"]) {
                line.push_str(&format!(
                    "; also mapped by {p}: ask the user, then `glados choose replace|prefer {}`",
                    text(m, "sii")
                ));
            }
            (r, line)
        }
        Cmd::Choose { choice, .. } => {
            let r = post("/v1/mappings/choice")?;
            let line = done_line(&r, &format!("{choice:?}").to_lowercase());
            (r, line)
        }
        Cmd::Remedy { remedy, .. } => {
            let r = post(remedy.path())?;
            let line = done_line(&r, remedy.path().rsplit('/').next().unwrap_or_default());
            (r, line)
        }
        Cmd::Delete { .. } => {
            let r = post("/v1/mappings/delete")?;
            let line = done_line(&r, "deleted");
            (r, line)
        }
        Cmd::Mine { .. } => {
            let r = post("/v1/mappings/mine")?;
            let m = &r["mapping"];
            let mut line = if m.is_object() {
                mapping_line(m)
            } else {
                "no mapping of yours".to_owned()
            };
            if let Some(p) = party(&r["preferred_elsewhere"]) {
                line.push_str(&format!("; preferred elsewhere: {p}"));
            }
            (r, line)
        }
        Cmd::Bulk(_) | Cmd::Webhooks { .. } => return Ok(0),
    };
    if cli.json {
        println!("{out}");
    } else {
        println!("{line}");
    }
    Ok(0)
}

/// `sii → provider:user (verified by …, preferred)` for a `Mapping`.
fn mapping_line(m: &Value) -> String {
    format!(
        "{} → {} (verified by {}{})",
        text(m, "sii"),
        text(m, "ssi"),
        text(m, "verified_by"),
        if m["preferred"] == true {
            ", preferred"
        } else {
            ""
        }
    )
}

/// One line for an action answer (`ActionDone`).
fn done_line(r: &Value, what: &str) -> String {
    let notified: Vec<String> = r["notified"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(clean).collect())
        .unwrap_or_default();
    if notified.is_empty() {
        format!("{}: {what}", text(r, "sii"))
    } else {
        format!(
            "{}: {what}; notified {}",
            text(r, "sii"),
            notified.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parties_read_naturally() {
        assert_eq!(party(&json!(null)), None);
        assert_eq!(
            party(&json!({"provider":"demo-msg","name":"Demo","gp":"gp-b"})).as_deref(),
            Some("demo-msg (Demo, on gp-b)")
        );
        assert_eq!(party(&json!({"provider":"x"})).as_deref(), Some("x"));
    }
}
