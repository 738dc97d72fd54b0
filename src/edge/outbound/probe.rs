//! Talking to peer GPs over fetch.

use crate::edge::config::{GpConfig, Peer};
use serde::Serialize;
use worker::{AbortSignal, Fetch, Method, Request, RequestInit};

/// How long a peer may take before we count it as unreachable.
const PEER_TIMEOUT_MS: u32 = 2_000;

/// What probing one peer found.
#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub id: String,
    pub url: String,
    pub reachable: bool,
    /// HTTP status the peer answered with, if it answered.
    pub status: Option<u16>,
    /// The id the peer reports for itself; must equal `id`.
    pub reported_id: Option<String>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// Probes every configured peer's `GET /v1/gp` in parallel.
pub async fn probe_all(cfg: &GpConfig) -> Vec<PeerStatus> {
    futures_util::future::join_all(cfg.peers.iter().map(probe)).await
}

async fn probe(peer: &Peer) -> PeerStatus {
    let started = crate::edge::clock::now_ms();
    let url = format!("{}/v1/gp", peer.url.trim_end_matches('/'));
    let outcome = fetch_json(&url).await;
    let latency_ms = crate::edge::clock::now_ms().saturating_sub(started);
    let mut st = PeerStatus {
        id: peer.id.clone(),
        url: peer.url.clone(),
        reachable: false,
        status: None,
        reported_id: None,
        latency_ms,
        error: None,
    };
    match outcome {
        Ok((status, body)) => {
            st.status = Some(status);
            st.reported_id = body
                .as_ref()
                .and_then(|b| b.get("id"))
                .and_then(|v| v.as_str())
                .map(str::to_string);
            st.reachable = status == 200;
            if st.reachable && st.reported_id.as_deref() != Some(peer.id.as_str()) {
                st.error = Some(format!(
                    "peer at {} reports id {:?}, configured as {:?}",
                    peer.url, st.reported_id, peer.id
                ));
            }
        }
        Err(e) => st.error = Some(e),
    }
    st
}

/// GETs a URL with a timeout; returns the status and the body if it is JSON.
async fn fetch_json(url: &str) -> Result<(u16, Option<serde_json::Value>), String> {
    let mut init = RequestInit::new();
    init.with_method(Method::Get);
    let req = Request::new_with_init(url, &init).map_err(|e| format!("bad peer url {url}: {e}"))?;
    let signal: AbortSignal = web_sys::AbortSignal::timeout_with_u32(PEER_TIMEOUT_MS).into();
    let mut resp = Fetch::Request(req)
        .send_with_signal(&signal)
        .await
        .map_err(|e| format!("fetch {url}: {e}"))?;
    let status = resp.status_code();
    // A peer's `/v1/gp` is a few hundred bytes; read no more than 64 KiB
    // of whatever answers there.
    let body = crate::edge::outbound::peer::read_capped_body(&mut resp, 64 << 10)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    Ok((status, body))
}
