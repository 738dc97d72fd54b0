//! `POST /admin/v1/filter/rebuild`: the operator rebuilds the GP's filter now (draft §9).
use crate::edge::rpc::filter::FilterClient;

use crate::edge::http::error::ApiResult;
use crate::edge::http::request::Request;
use worker::{Env, Response};

/// `POST /admin/v1/filter/rebuild`: starts a new filter version now.
pub async fn rebuild(req: Request, env: &Env) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    let resp = FilterClient::new(env).rebuild().await;
    // This isolate shows the new version at once.
    crate::edge::api::public::info::forget_filter_info();
    resp
}
