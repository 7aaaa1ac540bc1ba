//! What operators see over HTTP: Prometheus metrics, the JSON API and the dashboard page.
//!
//! A WebSocket listener that is not asked to upgrade hands its request here (`respond`); the
//! request was read and parsed by `net`, which writes the response back. This module knows no
//! sockets: it reads the shard's state and answers.

pub mod http;

use crate::security::Tables;
use crate::shard::Shard;
use http::{Request, Response};
use std::rc::Rc;
use std::sync::Arc;

/// What a request may use to answer.
pub struct Context {
    /// The shard the request's connection is served on.
    pub shard: Rc<Shard>,
    /// The password and ACL tables of the moment (HTTP Basic credentials are checked against
    /// the password file).
    pub tables: Arc<Tables>,
}

/// Answers one HTTP request.
pub async fn respond(request: &Request, _ctx: &Context) -> Response {
    Response::text(404, format!("no such page: {}\n", request.path))
}
