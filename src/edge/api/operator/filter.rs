//! `POST /admin/v1/filter/rebuild`: the operator rebuilds the GP's filter now (draft §9).

use crate::edge::http::error::ApiResult;
use crate::edge::objects::filter as filter_object;
use worker::{Env, Method, Request, Response};

/// `POST /admin/v1/filter/rebuild`: starts a new filter version now.
pub async fn rebuild(req: Request, env: &Env) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    filter_object::call(env, "/rebuild", Method::Post, None).await
}
