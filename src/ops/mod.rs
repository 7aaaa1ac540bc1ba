//! What operators see over HTTP: Prometheus metrics, the JSON API and the dashboard page.
//!
//! A WebSocket listener that is not asked to upgrade hands its request here (`respond`); the
//! request was read and parsed by `net`, which writes the response back. This module knows no
//! sockets: it asks the shards (`Shard::ask_all`, over the mesh) and answers.
//!
//! - `http`: the request and response types.
//! - `auth`: HTTP Basic credentials.
//! - `api`: the JSON documents, merged from every shard's answer.
//! - `prometheus`: the `/metrics` text.
//! - `dashboard.html`: the page served at `/`.

pub mod api;
pub mod auth;
pub mod http;
pub mod prometheus;

use crate::security::Tables;
use crate::shard::query::{Query, Report};
use crate::shard::Shard;
use http::{Request, Response};
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The dashboard: one self-contained page (no CDN, no build step).
const DASHBOARD_HTML: &str = include_str!("dashboard.html");
/// Where the page expects the credentials it connects over MQTT with.
const CREDENTIALS_SLOT: &str = "/*CREDENTIALS*/null";
/// How long a request waits for every shard's answer: a shard stopping never answers.
const SHARDS_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request may use to answer.
pub struct Context {
    /// The shard the request's connection is served on.
    pub shard: Rc<Shard>,
    /// The password and ACL tables of the moment (HTTP Basic credentials are checked against
    /// the password file).
    pub tables: Arc<Tables>,
}

/// Answers one HTTP request.
pub async fn respond(request: &Request, ctx: &Context) -> Response {
    let credentials = auth::basic_credentials(request);
    let presented = credentials
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.as_slice()));
    if !ctx.tables.admits_http(presented) {
        return auth::challenge();
    }
    let path = request.path.as_str();
    let method = request.method.as_str();
    if let Some(rest) = path.strip_prefix("/api/v1/clients/") {
        return client_route(method, rest, ctx).await;
    }
    let allowed = match path {
        "/" | "/index.html" | "/metrics" | "/api/v1/stats" | "/api/v1/clients"
        | "/api/v1/topics" => "GET",
        _ => return Response::text(404, format!("no such page: {path}\n")),
    };
    if method != allowed && !(method == "HEAD" && allowed == "GET") {
        return not_allowed(allowed);
    }
    match path {
        "/" | "/index.html" => dashboard(credentials),
        "/metrics" => metrics(ctx).await,
        "/api/v1/stats" => stats(ctx).await,
        "/api/v1/clients" => clients(request, ctx).await,
        _ => topics(request, ctx).await,
    }
}

/// `/api/v1/clients/{id}` (GET) and `/api/v1/clients/{id}/disconnect` (POST).
async fn client_route(method: &str, rest: &str, ctx: &Context) -> Response {
    if method == "POST" {
        return match rest.strip_suffix("/disconnect") {
            Some(id) => disconnect(id, ctx).await,
            None => not_allowed("GET"),
        };
    }
    if method != "GET" && method != "HEAD" {
        return not_allowed("GET");
    }
    let Some(reports) = ask(ctx, Query::Client(rest.to_string())).await else {
        return unavailable();
    };
    match api::client(reports) {
        Some(client) => json_response(200, &json!(client)),
        None => json_response(404, &json!({"error": "no such client", "client_id": rest})),
    }
}

/// `POST /api/v1/clients/{id}/disconnect`: closes the client's connection with DISCONNECT
/// 0x98 (Administrative action) for a 5.0 client.
async fn disconnect(id: &str, ctx: &Context) -> Response {
    let Some(reports) = ask(ctx, Query::Disconnect(id.to_string())).await else {
        return unavailable();
    };
    if api::disconnected(&reports) {
        tracing::info!(client_id = id, "disconnected by an operator over HTTP");
        json_response(200, &json!({"disconnected": true, "client_id": id}))
    } else {
        let body =
            json!({"disconnected": false, "client_id": id, "error": "no such connected client"});
        json_response(404, &body)
    }
}

/// `GET /`: the dashboard, carrying the credentials this request came with so that its MQTT
/// connection over WebSocket logs in as the same user.
fn dashboard(credentials: Option<(String, Vec<u8>)>) -> Response {
    let slot = match credentials {
        Some((user, password)) => json!({
            "username": user,
            "password": String::from_utf8_lossy(&password),
        })
        .to_string(),
        None => "null".to_string(),
    };
    // `<` escaped so a crafted password cannot close the script element.
    let page = DASHBOARD_HTML.replacen(CREDENTIALS_SLOT, &slot.replace('<', "\\u003c"), 1);
    let mut response = Response::with_body(200, "text/html; charset=utf-8", page.into_bytes());
    // The page holds the credentials: no cache may keep it.
    response
        .headers
        .push(("Cache-Control".to_string(), "no-store".to_string()));
    response
}

async fn metrics(ctx: &Context) -> Response {
    let Some(reports) = ask(ctx, Query::Snapshot).await else {
        return unavailable();
    };
    let text = prometheus::render(&api::snapshots(reports));
    Response::with_body(200, prometheus::CONTENT_TYPE, text.into_bytes())
}

async fn stats(ctx: &Context) -> Response {
    let Some(reports) = ask(ctx, Query::Snapshot).await else {
        return unavailable();
    };
    json_response(200, &api::stats(api::snapshots(reports)))
}

/// `GET /api/v1/clients?after=<client id>&limit=<n>`.
async fn clients(request: &Request, ctx: &Context) -> Response {
    let limit = api::page_size(request.query_param("limit").as_deref());
    let after = request.query_param("after").unwrap_or_default();
    // One more than the page, to know whether another page follows.
    let query = Query::Clients {
        after,
        limit: limit + 1,
    };
    let Some(reports) = ask(ctx, query).await else {
        return unavailable();
    };
    json_response(200, &api::clients_page(reports, limit))
}

/// `GET /api/v1/topics?filter=<filter>`, `?topic=<topic name>` or `?top=<n>`.
async fn topics(request: &Request, ctx: &Context) -> Response {
    let (query, key) = if let Some(filter) = request.query_param("filter") {
        (Query::Filter(filter.clone()), json!({"filter": filter}))
    } else if let Some(topic) = request.query_param("topic") {
        (Query::Topic(topic.clone()), json!({"topic": topic}))
    } else {
        let n = request.query_param("top").and_then(|n| n.parse().ok());
        let n = n
            .unwrap_or(api::TOP_FILTERS_DEFAULT)
            .clamp(1, api::TOP_FILTERS_MAX);
        let Some(reports) = ask(ctx, Query::TopFilters(n)).await else {
            return unavailable();
        };
        return json_response(200, &api::top_filters(reports, n));
    };
    let Some(reports) = ask(ctx, query).await else {
        return unavailable();
    };
    let count = api::count(reports);
    let mut body = key;
    body["subscriptions"] = json!(count.subscriptions);
    body["shared_members"] = json!(count.shared_members);
    json_response(200, &body)
}

/// Every shard's answer to `query`, or None when one did not answer in time.
async fn ask(ctx: &Context, query: Query) -> Option<Vec<Report>> {
    let shard = ctx.shard.clone();
    let asked = glommio::timer::timeout(SHARDS_ANSWER_TIMEOUT, async move {
        Ok(shard.ask_all(query).await)
    });
    asked.await.ok()
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    Response::with_body(status, "application/json", text)
}

fn not_allowed(allow: &str) -> Response {
    let mut response = Response::text(405, format!("use {allow}\n"));
    response
        .headers
        .push(("Allow".to_string(), allow.to_string()));
    response
}

fn unavailable() -> Response {
    Response::text(503, "a shard did not answer in time; try again\n")
}

#[cfg(test)]
mod tests;
