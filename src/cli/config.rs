//! Where the client's settings come from: flags, then `GLADOS_*`
//! environment variables (clap reads both), then the config file that
//! `glados login` writes (`$GLADOS_CONFIG`, else
//! `$XDG_CONFIG_HOME/glados/config.toml`, else `~/.config/glados/config.toml`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::Failure;

/// The connection settings, as the config file holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The GP's base URL, e.g. `https://gp.example.org`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gp: Option<String>,
    /// The AP's OAuth client id (its provider id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The client secret the operator handed out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// PEM file with the client certificate (chain) for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM file with the client certificate's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// PEM file of root certificates to trust for the GP's server
    /// certificate instead of the built-in Mozilla roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl Settings {
    /// `self`, with every unset field taken from `fallback`.
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            gp: self.gp.or(fallback.gp),
            client_id: self.client_id.or(fallback.client_id),
            client_secret: self.client_secret.or(fallback.client_secret),
            cert: self.cert.or(fallback.cert),
            key: self.key.or(fallback.key),
            ca: self.ca.or(fallback.ca),
        }
    }

    /// The GP URL without a trailing slash; an error naming how to set it.
    pub fn gp_url(&self) -> Result<String, Failure> {
        let gp = self.gp.as_deref().map(str::trim).unwrap_or_default();
        if gp.is_empty() {
            return Err(Failure::Usage(
                "no GP: pass --gp URL, set GLADOS_GP, or run `glados login`".into(),
            ));
        }
        if !(gp.starts_with("https://") || gp.starts_with("http://")) {
            return Err(Failure::Usage(format!(
                "--gp must be an http:// or https:// URL, not {gp:?}"
            )));
        }
        Ok(gp.trim_end_matches('/').to_owned())
    }

    /// Client id and secret; an error naming how to set them.
    pub fn credentials(&self) -> Result<(String, String), Failure> {
        match (&self.client_id, &self.client_secret) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                Ok((id.clone(), secret.clone()))
            }
            _ => Err(Failure::Usage(
                "no client credentials: pass --client-id and --client-secret, set \
                 GLADOS_CLIENT_ID and GLADOS_CLIENT_SECRET, or run `glados login`"
                    .into(),
            )),
        }
    }
}

/// The config file's path.
pub fn default_path() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("GLADOS_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("glados").join("config.toml"))
}

/// Reads the config file; a missing file is empty settings.
pub fn load(path: &Path) -> Result<Settings, Failure> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
        Err(e) => {
            return Err(Failure::Usage(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    toml::from_str(&text).map_err(|e| {
        Failure::Usage(format!(
            "{} is not a valid config file: {e}",
            path.display()
        ))
    })
}

/// Writes the config file, readable by its owner only (it holds the
/// client secret).
pub fn save(path: &Path, s: &Settings) -> Result<(), Failure> {
    let text =
        toml::to_string(s).map_err(|e| Failure::Usage(format!("cannot encode the config: {e}")))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("toml.tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", tmp.display())))?;
    f.write_all(b"# glados client settings (written by `glados login`); holds a secret.\n")?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Relative certificate paths are stored absolute, so the file works from
/// any directory.
pub fn absolute(p: Option<PathBuf>) -> Option<PathBuf> {
    p.map(|p| std::path::absolute(&p).unwrap_or(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env_win_over_the_file() {
        let file = Settings {
            gp: Some("https://file".into()),
            client_id: Some("a".into()),
            client_secret: Some("s".into()),
            ..Settings::default()
        };
        let given = Settings {
            gp: Some("http://flag/".into()),
            ..Settings::default()
        };
        let s = given.or(file);
        assert_eq!(s.gp_url().ok().as_deref(), Some("http://flag"));
        assert_eq!(s.credentials().ok(), Some(("a".into(), "s".into())));
        assert!(Settings::default().gp_url().is_err());
        let ftp = Settings {
            gp: Some("ftp://x".into()),
            ..Settings::default()
        };
        assert!(ftp.gp_url().is_err());
    }

    #[test]
    fn round_trips_through_a_private_file() {
        let dir = std::env::temp_dir().join(format!("glados-cli-config-{}", std::process::id()));
        let path = dir.join("config.toml");
        let s = Settings {
            gp: Some("https://gp.example.org".into()),
            client_id: Some("demo".into()),
            client_secret: Some("secret".into()),
            cert: Some("/etc/ap/client.pem".into()),
            key: Some("/etc/ap/client.key".into()),
            ca: None,
        };
        assert_eq!(save(&path, &s), Ok(()));
        assert_eq!(load(&path), Ok(s));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        assert_eq!(load(&dir.join("missing.toml")), Ok(Settings::default()));
        let _ = fs::remove_dir_all(&dir);
    }
}
