//! The GP's configuration: every `wrangler.toml` var, read and validated in
//! this one place. A typo is refused with an error naming the var, never
//! silently replaced by a default (an operator who set `MAPPING_SHARDS =
//! "l6"` must not get 16 shards one day and a migration problem the next).
//!
//! Pure: the caller passes a lookup of the vars (the Workers `Env` in the
//! worker, a map in tests). `PEERS` is JSON, parsed by the caller (core has
//! no JSON parser) and checked here.
//!
//! draft §6: "there is NOT an actual discovery protocol for finding the set
//! of GP in the world. Rather, they are just well known." So the peers are
//! static configuration, not something learned at run time.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::core::credentials::validate_webhook_url;
use crate::core::outbox::RetryPolicy;
use crate::core::verification::{CodePolicy, SendLimit};

/// The names of the GP's secrets (`wrangler secret put NAME`; `.dev.vars`
/// locally). They are never vars: a value in `[vars]` is deployed in clear
/// text and sits in the repository.
pub const SECRETS: &[&str] = &[
    "ADMIN_TOKEN",
    "TOKEN_KEYS",
    "WEBHOOK_MASTER_KEY",
    "GP_SIGNING_KEY",
    "STATEMENT_KEYS",
    "CODE_PEPPER",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_FROM",
    "SENDGRID_API_KEY",
    "EMAIL_FROM",
];

/// One configured peer GP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's GP id, as it reports it at `GET /v1/gp`.
    pub id: String,
    /// Base URL the peer serves its API at (no trailing slash needed).
    pub url: String,
    /// The peer's Ed25519 public key (32 bytes, base64 or base64url): its
    /// signed requests verify against it (draft §11.1: GPs are "fully
    /// trusted", ARCHITECTURE.md, Invariants 6: but signed). A peer without
    /// one can be called but every request it sends is refused.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// The routing filter's bit layout (`FILTER_LAYOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterLayout {
    /// Cache-line-blocked Bloom filter (the default).
    Blocked,
    /// Classic Bloom filter.
    Plain,
    /// draft §9 exactly: k = 1, "the lowest N bits" (interop).
    Draft,
}

/// What `GET /v1/filter` shows the public (`PUBLIC_FILTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicFilter {
    /// 404 (production).
    Off,
    /// Parameters and a coarse fill map, no bits.
    Summary,
    /// The snapshot: an enumeration aid, for demo GPs only.
    Full,
}

/// Everything a request handler needs to know about this GP.
#[derive(Debug, Clone)]
pub struct GpConfig {
    pub id: String,
    pub name: String,
    pub peers: Vec<Peer>,
    /// Expected number of SIIs, used to size the routing filter.
    pub filter_expected_siis: u64,
    /// Target false-positive rate of the routing filter: `FILTER_FP_RATE`,
    /// or by default [`default_fp_rate`] of the federation's size
    /// (ARCHITECTURE.md, "Routing table", issue 13 item 4).
    pub filter_fp_rate: f64,
    /// Whether `FILTER_FP_RATE` was set (else it follows the federation).
    pub filter_fp_rate_set: bool,
    /// Expected peers asked for nothing per query that the default fp
    /// rate aims at (`ROUTING_FALSE_FANOUT`, default 0.1).
    pub false_fanout_target: f64,
    /// GPs the federation is sized for (`FEDERATION_GPS`, default 200;
    /// the configured peers + 1 if more).
    pub federation_gps: u32,
    /// The routing table has 2^r partitions (`ROUTING_PARTITION_BITS`,
    /// default 16, 0..=24): choose r so one partition of every peer's
    /// filter is a few hundred KiB at most (ARCHITECTURE.md, "Routing table").
    pub routing_partition_bits: u8,
    /// Routing shards, the writers of the table (`ROUTING_SHARDS`, a power
    /// of two ≤ 2^r and ≤ 1024, default 16).
    pub routing_shards: u32,
    /// The isolate's routing memory budget in MiB (`ROUTING_CACHE_MB`,
    /// default 16, 1..=96).
    pub routing_cache_mb: u32,
    pub filter_layout: FilterLayout,
    /// draft §9: a new filter version every this many hours; 0 = only on
    /// the operator's request (`FILTER_REBUILD_HOURS`, default 168).
    pub filter_rebuild_hours: u64,
    pub public_filter: PublicFilter,
    /// `DEBUG_ROUTES`: the test routes are wanted. They still answer only
    /// requests made to a loopback host, i.e. on a local runtime
    /// (`is_loopback_host`): a deployed GP never sees one.
    pub debug_routes: bool,
    /// draft §11.3: "glados adds a requirement for MTLS between the provider
    /// and glados". `REQUIRE_MTLS`, default true; "false" only for local GPs.
    pub require_mtls: bool,
    /// Lifetime of access tokens (`TOKEN_TTL_SECONDS`, default 300, 1..=3600).
    pub token_ttl_secs: u64,
    /// How long an isolate trusts its cached copy of an AP's registry entry
    /// (`AP_CACHE_SECONDS`, default 30, 0..=3600); bounds how late a
    /// suspension bites.
    pub ap_cache_secs: u64,
    /// Mapping shards (`MAPPING_SHARDS`, default 16, 1..=4096); fixed for
    /// the life of a deployment (`core::shard`).
    pub mapping_shards: u32,
    /// Code delivery APIs (`TWILIO_BASE_URL`, `SENDGRID_BASE_URL`).
    pub twilio_base_url: String,
    pub sendgrid_base_url: String,
    /// draft §8.2 codes: the default policy with `CODE_TTL_SECONDS`
    /// (default 600, 60..=86400).
    pub code_policy: CodePolicy,
    /// `CODES_PER_SII_PER_HOUR` (5), `CODES_PER_AP_PER_HOUR` (1000).
    pub send_limit: SendLimit,
    /// `WEBHOOK_RETRY_BASE_MS`, `WEBHOOK_RETRY_MAX_MS`,
    /// `WEBHOOK_RETRY_HORIZON_MS` (5 s, 1 h, 24 h).
    pub webhook_retry: RetryPolicy,
    /// `PEER_STRIKES_PER_AP_PER_DAY` (3, at least 1).
    pub peer_strikes_per_ap_per_day: u32,
    /// How long a signed mapping statement is valid
    /// (`STATEMENT_TTL_SECONDS`, default a day, a minute to 30 days).
    pub statement_ttl_secs: u64,
    /// Public statement keys still published as retired whose seeds are
    /// gone (`STATEMENT_RETIRED_KEYS`, base64, comma-separated).
    pub statement_retired_keys: Vec<[u8; 32]>,
}

/// A var the GP cannot run with: the operator's error, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The var (or secret) at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}: {}", self.var, self.why)
    }
}

fn err<T>(var: &'static str, why: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        var,
        why: why.into(),
    })
}

/// Whether `host` (as in a URL, IPv6 with or without brackets) names this
/// machine. A deployed Worker is reached only by its hostnames, so a request
/// to a loopback host is a local run (workerd, `wrangler dev`).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<core::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An outbound base URL: `https://`, or `http://` to a loopback host (a
/// local stand-in). Anything else would send SIIs or codes in clear text.
fn check_url(var: &'static str, url: &str) -> Result<(), ConfigError> {
    validate_webhook_url(url, true).or_else(|e| {
        err(
            var,
            format!("{url:?} is not an https:// URL (http:// only to a loopback host): {e}"),
        )
    })
}

/// The default filter false-positive rate: with every GP at it, a query
/// asks `target` peers for nothing on average across `gps` GPs (draft §9:
/// "N is a tradeoff between space efficiency ... and the volume of
/// traffic"): 0.1 / 199 ≈ 5.0e-4 at 200 GPs.
pub fn default_fp_rate(target: f64, gps: u32) -> f64 {
    (target / f64::from(gps.saturating_sub(1).max(1))).min(0.25)
}

/// Reads the vars through `var` (unset and empty are the same).
struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|s| !s.trim().is_empty())
    }

    fn num<T: core::str::FromStr + PartialOrd + fmt::Display>(
        &self,
        name: &'static str,
        default: T,
        range: core::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError> {
        let v = match self.get(name) {
            None => default,
            Some(s) => match s.trim().parse::<T>() {
                Ok(v) => v,
                Err(_) => return err(name, format!("{s:?} is not a number")),
            },
        };
        if !range.contains(&v) {
            return err(
                name,
                format!("{v} is outside {}..={}", range.start(), range.end()),
            );
        }
        Ok(v)
    }

    fn choice<T: Copy>(
        &self,
        name: &'static str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(s) = self.get(name) else {
            return Ok(default);
        };
        match choices.iter().find(|(k, _)| *k == s.trim()) {
            Some((_, v)) => Ok(*v),
            None => {
                let names: Vec<String> = choices.iter().map(|(k, _)| format!("{k:?}")).collect();
                err(name, format!("{s:?} must be one of {}", names.join(", ")))
            }
        }
    }
}

impl GpConfig {
    /// Reads and validates every var through `var`; `peers` is `PEERS`
    /// already parsed from its JSON (checked here).
    pub fn parse(
        var: &dyn Fn(&str) -> Option<String>,
        peers: Vec<Peer>,
    ) -> Result<GpConfig, ConfigError> {
        let v = Vars(var);
        let Some(id) = v.get("GP_ID") else {
            return err("GP_ID", "is not set");
        };
        let name = v.get("GP_NAME").unwrap_or_else(|| id.clone());
        for p in &peers {
            // Peer ids name routing-table sections (1..=255 bytes) and objects.
            if p.id.len() > 255 {
                return err(
                    "PEERS",
                    format!("a peer's id is at most 255 bytes, got {:?}", p.id),
                );
            }
            if p.id.is_empty() || p.id == id {
                return err(
                    "PEERS",
                    format!(
                        "a peer's id must be set and differ from GP_ID, got {:?}",
                        p.id
                    ),
                );
            }
            check_url("PEERS", &p.url)?;
        }
        let false_fanout_target: f64 = v.num("ROUTING_FALSE_FANOUT", 0.1, 1e-6..=10.0)?;
        let federation_gps = v.num("FEDERATION_GPS", 200u32, 2..=100_000)?.max(
            u32::try_from(peers.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        );
        let filter_fp_rate_set = v.get("FILTER_FP_RATE").is_some();
        let filter_fp_rate: f64 = v.num(
            "FILTER_FP_RATE",
            default_fp_rate(false_fanout_target, federation_gps),
            1e-9..=0.49,
        )?;
        let routing_partition_bits: u8 = v.num(
            "ROUTING_PARTITION_BITS",
            16,
            0..=crate::core::routing::MAX_PARTITION_BITS,
        )?;
        let routing_shards: u32 = v.num("ROUTING_SHARDS", 16, 1..=1024)?;
        if !routing_shards.is_power_of_two()
            || u64::from(routing_shards) > 1u64 << routing_partition_bits
        {
            return err(
                "ROUTING_SHARDS",
                format!(
                    "{routing_shards} must be a power of two, at most 1024 and at most \
                     2^ROUTING_PARTITION_BITS ({})",
                    1u64 << routing_partition_bits
                ),
            );
        }
        let routing_cache_mb: u32 = v.num("ROUTING_CACHE_MB", 16, 1..=96)?;
        let bool_choices = [("true", true), ("1", true), ("false", false), ("0", false)];
        let twilio_base_url = v
            .get("TWILIO_BASE_URL")
            .unwrap_or_else(|| "https://api.twilio.com".into());
        check_url("TWILIO_BASE_URL", &twilio_base_url)?;
        let sendgrid_base_url = v
            .get("SENDGRID_BASE_URL")
            .unwrap_or_else(|| "https://api.sendgrid.com".into());
        check_url("SENDGRID_BASE_URL", &sendgrid_base_url)?;
        let d = CodePolicy::default();
        let ttl_s: u64 = v.num("CODE_TTL_SECONDS", d.ttl_ms() / 1000, 60..=86_400)?;
        let code_policy = CodePolicy::new(d.length(), d.alphabet(), ttl_s * 1000, d.max_attempts())
            .or_else(|e| err("CODE_TTL_SECONDS", e.to_string()))?;
        let sd = SendLimit::default();
        let send_limit = SendLimit {
            per_sii_per_hour: v.num("CODES_PER_SII_PER_HOUR", sd.per_sii_per_hour, 1..=u32::MAX)?,
            per_ap_per_hour: v.num("CODES_PER_AP_PER_HOUR", sd.per_ap_per_hour, 1..=u32::MAX)?,
        };
        let rd = RetryPolicy::default();
        let webhook_retry = RetryPolicy {
            base_ms: v.num("WEBHOOK_RETRY_BASE_MS", rd.base_ms, 1..=86_400_000)?,
            max_delay_ms: v.num("WEBHOOK_RETRY_MAX_MS", rd.max_delay_ms, 1..=86_400_000)?,
            horizon_ms: v.num(
                "WEBHOOK_RETRY_HORIZON_MS",
                rd.horizon_ms,
                1..=30 * 86_400_000,
            )?,
        };
        if webhook_retry.base_ms > webhook_retry.max_delay_ms {
            return err(
                "WEBHOOK_RETRY_BASE_MS",
                format!(
                    "{} is above WEBHOOK_RETRY_MAX_MS ({})",
                    webhook_retry.base_ms, webhook_retry.max_delay_ms
                ),
            );
        }
        Ok(GpConfig {
            name,
            peers,
            filter_expected_siis: v.num("FILTER_EXPECTED_SIIS", 1_000_000, 1..=100_000_000_000)?,
            filter_fp_rate,
            filter_fp_rate_set,
            false_fanout_target,
            federation_gps,
            routing_partition_bits,
            routing_shards,
            routing_cache_mb,
            filter_layout: v.choice(
                "FILTER_LAYOUT",
                FilterLayout::Blocked,
                &[
                    ("blocked", FilterLayout::Blocked),
                    ("plain", FilterLayout::Plain),
                    ("draft", FilterLayout::Draft),
                ],
            )?,
            filter_rebuild_hours: v.num("FILTER_REBUILD_HOURS", 168, 0..=100_000)?,
            public_filter: v.choice(
                "PUBLIC_FILTER",
                PublicFilter::Off,
                &[
                    ("off", PublicFilter::Off),
                    ("summary", PublicFilter::Summary),
                    ("full", PublicFilter::Full),
                ],
            )?,
            debug_routes: v.choice("DEBUG_ROUTES", false, &bool_choices)?,
            require_mtls: v.choice("REQUIRE_MTLS", true, &bool_choices)?,
            token_ttl_secs: v.num("TOKEN_TTL_SECONDS", 300, 1..=3600)?,
            ap_cache_secs: v.num("AP_CACHE_SECONDS", 30, 0..=3600)?,
            mapping_shards: v.num("MAPPING_SHARDS", 16, 1..=4096)?,
            twilio_base_url,
            sendgrid_base_url,
            code_policy,
            send_limit,
            webhook_retry,
            peer_strikes_per_ap_per_day: v.num("PEER_STRIKES_PER_AP_PER_DAY", 3, 1..=10_000)?,
            statement_ttl_secs: v.num(
                "STATEMENT_TTL_SECONDS",
                crate::core::statement::DEFAULT_TTL_S,
                crate::core::statement::TTL_RANGE_S,
            )?,
            statement_retired_keys: match v.get("STATEMENT_RETIRED_KEYS") {
                None => Vec::new(),
                Some(text) => crate::core::statement::parse_key_list(&text)
                    .or_else(|e| err("STATEMENT_RETIRED_KEYS", e.to_string()))?,
            },
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<GpConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("GP_ID".to_string(), "gp.example.org".to_string())])
            .collect();
        GpConfig::parse(&|k| map.get(k).cloned(), Vec::new())
    }

    #[test]
    fn defaults_are_production_settings() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.name, "gp.example.org");
        assert!(c.require_mtls);
        assert!(!c.debug_routes);
        assert_eq!(c.public_filter, PublicFilter::Off);
        assert_eq!(c.filter_layout, FilterLayout::Blocked);
        assert_eq!(c.mapping_shards, 16);
        assert_eq!(c.code_policy.ttl_ms(), 600_000);
        assert_eq!(c.send_limit, SendLimit::default());
        assert_eq!(c.webhook_retry, RetryPolicy::default());
        assert_eq!(c.filter_rebuild_hours, 168);
        assert_eq!(c.peer_strikes_per_ap_per_day, 3);
        assert_eq!(c.twilio_base_url, "https://api.twilio.com");
        // Issue 13 item 4: the fp rate follows the federation's size.
        assert!(!c.filter_fp_rate_set);
        assert_eq!(c.federation_gps, 200);
        assert!((c.filter_fp_rate - 0.1 / 199.0).abs() < 1e-12);
        assert_eq!(
            (
                c.routing_partition_bits,
                c.routing_shards,
                c.routing_cache_mb
            ),
            (16, 16, 16)
        );
    }

    #[test]
    fn routing_vars_are_read() {
        let c = parse(&[
            ("FILTER_FP_RATE", "0.01"),
            ("ROUTING_PARTITION_BITS", "4"),
            ("ROUTING_SHARDS", "4"),
            ("ROUTING_CACHE_MB", "8"),
        ])
        .unwrap();
        assert!(c.filter_fp_rate_set && c.filter_fp_rate == 0.01);
        assert_eq!(
            (
                c.routing_partition_bits,
                c.routing_shards,
                c.routing_cache_mb
            ),
            (4, 4, 8)
        );
        let c = parse(&[("FEDERATION_GPS", "11"), ("ROUTING_FALSE_FANOUT", "1")]).unwrap();
        assert!((c.filter_fp_rate - 0.1).abs() < 1e-12);
    }

    #[test]
    fn values_are_read() {
        let c = parse(&[
            ("MAPPING_SHARDS", "4"),
            ("CODE_TTL_SECONDS", "120"),
            ("CODES_PER_SII_PER_HOUR", "7"),
            ("CODES_PER_AP_PER_HOUR", "2"),
            ("WEBHOOK_RETRY_BASE_MS", "100"),
            ("WEBHOOK_RETRY_MAX_MS", "400"),
            ("WEBHOOK_RETRY_HORIZON_MS", "1500"),
            ("PEER_STRIKES_PER_AP_PER_DAY", "2"),
            ("FILTER_REBUILD_HOURS", "0"),
            ("FILTER_LAYOUT", "draft"),
            ("PUBLIC_FILTER", "summary"),
            ("DEBUG_ROUTES", "1"),
            ("REQUIRE_MTLS", "false"),
            ("TWILIO_BASE_URL", "http://127.0.0.1:8790"),
        ])
        .unwrap();
        assert_eq!(c.mapping_shards, 4);
        assert_eq!(c.code_policy.ttl_ms(), 120_000);
        assert_eq!(c.send_limit.per_sii_per_hour, 7);
        assert_eq!(c.send_limit.per_ap_per_hour, 2);
        assert_eq!(
            c.webhook_retry,
            RetryPolicy {
                base_ms: 100,
                max_delay_ms: 400,
                horizon_ms: 1500
            }
        );
        assert_eq!(c.peer_strikes_per_ap_per_day, 2);
        assert_eq!(c.filter_rebuild_hours, 0);
        assert_eq!(c.filter_layout, FilterLayout::Draft);
        assert_eq!(c.public_filter, PublicFilter::Summary);
        assert!(c.debug_routes && !c.require_mtls);
    }

    /// Issue 14 item 14: each of these fell back to its default on a typo.
    #[test]
    fn a_typo_is_refused_naming_the_var() {
        for (var, value) in [
            ("CODE_TTL_SECONDS", "6OO"),
            ("CODE_TTL_SECONDS", "1"),
            ("CODES_PER_SII_PER_HOUR", "five"),
            ("CODES_PER_AP_PER_HOUR", "-1"),
            ("CODES_PER_AP_PER_HOUR", "0"),
            ("MAPPING_SHARDS", "l6"),
            ("MAPPING_SHARDS", "0"),
            ("WEBHOOK_RETRY_BASE_MS", "5s"),
            ("WEBHOOK_RETRY_MAX_MS", "1h"),
            ("WEBHOOK_RETRY_HORIZON_MS", "24h"),
            ("PEER_STRIKES_PER_AP_PER_DAY", "three"),
            ("PEER_STRIKES_PER_AP_PER_DAY", "0"),
            ("FILTER_REBUILD_HOURS", "weekly"),
            ("FILTER_LAYOUT", "bloked"),
            ("PUBLIC_FILTER", "ful"),
            ("DEBUG_ROUTES", "yes"),
            ("REQUIRE_MTLS", "ture"),
            ("TOKEN_TTL_SECONDS", "0"),
            ("AP_CACHE_SECONDS", "36000"),
            ("FILTER_FP_RATE", "1%"),
            ("FILTER_EXPECTED_SIIS", "10M"),
            ("ROUTING_PARTITION_BITS", "25"),
            ("ROUTING_SHARDS", "3"),
            ("ROUTING_SHARDS", "2048"),
            ("ROUTING_CACHE_MB", "0"),
            ("ROUTING_FALSE_FANOUT", "0"),
            ("FEDERATION_GPS", "1"),
            ("STATEMENT_TTL_SECONDS", "30"),
            ("STATEMENT_RETIRED_KEYS", "not-a-key"),
            ("TWILIO_BASE_URL", "http://api.twilio.com"),
            ("SENDGRID_BASE_URL", "api.sendgrid.com"),
        ] {
            let e = parse(&[(var, value)]).expect_err(&format!("{var}={value} accepted"));
            assert_eq!(e.var, var, "{var}={value}: {e}");
            assert!(e.to_string().starts_with(&format!("config {var}: ")), "{e}");
        }
        let e = parse(&[
            ("WEBHOOK_RETRY_BASE_MS", "500"),
            ("WEBHOOK_RETRY_MAX_MS", "400"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "WEBHOOK_RETRY_BASE_MS");
    }

    #[test]
    fn gp_id_is_required() {
        let e = GpConfig::parse(&|_| None, Vec::new()).unwrap_err();
        assert_eq!(e.var, "GP_ID");
    }

    /// Issue 14 item 14: peers in clear text only on a local run.
    #[test]
    fn peer_urls_are_https_or_loopback() {
        let peer = |url: &str| Peer {
            id: "gp-b".into(),
            url: url.into(),
            public_key: None,
        };
        let with = |url: &str| {
            GpConfig::parse(
                &|k| (k == "GP_ID").then(|| "gp-a".to_string()),
                vec![peer(url)],
            )
        };
        for ok in [
            "https://gp-b.example.org",
            "http://127.0.0.1:8788",
            "http://localhost:8788",
            "http://[::1]:8788",
        ] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://gp-b.example.org",
            "http://127.0.0.1.nip.io",
            "ftp://gp-b.example.org",
            "gp-b.example.org",
        ] {
            assert_eq!(with(bad).unwrap_err().var, "PEERS", "{bad}");
        }
        let own = GpConfig::parse(
            &|k| (k == "GP_ID").then(|| "gp-b".to_string()),
            vec![peer("https://gp-b.example.org")],
        );
        assert_eq!(own.unwrap_err().var, "PEERS");
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "localhost",
            "LOCALHOST",
            "[::1]",
            "::1",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "gp.example.org",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "[::2]",
            "",
            "localhost.evil",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn secrets_are_not_vars() {
        // No secret name is also read as a var (GpConfig::parse reads
        // through the lookup; a secret name there would be a var).
        let asked = std::cell::RefCell::new(Vec::new());
        let _ = GpConfig::parse(
            &|k| {
                asked.borrow_mut().push(k.to_string());
                (k == "GP_ID").then(|| "gp-a".to_string())
            },
            Vec::new(),
        );
        for s in SECRETS {
            assert!(!asked.borrow().iter().any(|k| k == s), "{s} read as a var");
        }
    }
}
