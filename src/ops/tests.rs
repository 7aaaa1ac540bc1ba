//! `respond` on a real one-shard `Shard` in a glommio executor, without sockets: routing,
//! methods, credentials, and the questions that cross the mesh (to the shard itself here).

use super::http::{Request, Response};
use super::{respond, Context};
use crate::config::Limits;
use crate::mesh::Mesh;
use crate::security::password::{hash_password, PasswordFile};
use crate::security::Tables;
use crate::shard::backpressure::Pressure;
use crate::shard::Shard;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Runs `requests` against a fresh one-shard broker core with `tables`; returns the answers.
fn answers(tables: Tables, requests: Vec<Request>) -> Vec<Response> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 << 10)
        .spawn(move || async move {
            let (mesh, local) = Mesh::new(0, None);
            let shard = Rc::new(Shard::new(
                Rc::new(mesh),
                1,
                Limits::default(),
                Arc::new(AtomicUsize::new(0)),
                Pressure::new(1 << 20, 1 << 19),
            ));
            let receiver = shard.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = local.recv().await {
                    receiver.on_message(msg).await;
                }
            })
            .detach();
            let ctx = Context {
                shard,
                tables: Arc::new(tables),
            };
            let mut out = Vec::new();
            for request in &requests {
                out.push(respond(request, &ctx).await);
            }
            out
        })
        .expect("an executor starts")
        .join()
        .expect("the executor finishes")
}

fn request(method: &str, target: &str) -> Request {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Request {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        ..Request::default()
    }
}

fn with_basic(mut request: Request, user: &str, password: &str) -> Request {
    let encoded = STANDARD.encode(format!("{user}:{password}"));
    request
        .headers
        .push(("authorization".into(), format!("Basic {encoded}")));
    request
}

fn body(response: &Response) -> serde_json::Value {
    serde_json::from_slice(&response.body).expect("a JSON body")
}

#[test]
fn every_endpoint_answers_on_an_empty_broker() {
    let got = answers(
        Tables::default(),
        vec![
            request("GET", "/api/v1/stats"),
            request("GET", "/metrics"),
            request("GET", "/api/v1/clients?limit=5"),
            request("GET", "/api/v1/clients/nobody"),
            request("GET", "/api/v1/topics?filter=a/%2B"),
            request("GET", "/api/v1/topics?topic=a/b"),
            request("GET", "/api/v1/topics"),
            request("POST", "/api/v1/clients/nobody/disconnect"),
            request("GET", "/"),
        ],
    );
    let status: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(status, [200, 200, 200, 404, 200, 200, 200, 404, 200]);
    assert_eq!(body(&got[0])["total"]["clients_connected"], 0);
    assert_eq!(body(&got[0])["shards"].as_array().map(Vec::len), Some(1));
    let metrics = String::from_utf8_lossy(&got[1].body);
    assert!(metrics.contains("ringcast_connections{shard=\"0\"} 0"));
    assert_eq!(body(&got[2])["clients"], serde_json::json!([]));
    assert_eq!(body(&got[4])["filter"], "a/+");
    assert_eq!(body(&got[4])["subscriptions"], 0);
    assert_eq!(body(&got[5])["topic"], "a/b");
    assert_eq!(body(&got[6])["filters"], serde_json::json!([]));
    assert_eq!(got[8].content_type, "text/html; charset=utf-8");
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let got = answers(
        Tables::default(),
        vec![
            request("GET", "/nope"),
            request("POST", "/metrics"),
            request("DELETE", "/api/v1/clients/x"),
            request("POST", "/api/v1/clients/x"),
        ],
    );
    assert_eq!(got[0].status, 404);
    for response in &got[1..] {
        assert_eq!(response.status, 405);
        assert_eq!(response.headers[0].0, "Allow");
    }
}

/// A password file with `admin:secret` and `reader:secret`; only `admin` in `http_users`.
fn protected() -> Tables {
    let hash = hash_password(b"secret", 1000).expect("a hash");
    let file = format!("admin:{hash}\nreader:{hash}\n");
    Tables {
        passwords: Some(PasswordFile::parse(&file)),
        http_users: vec!["admin".to_string()],
        ..Tables::default()
    }
}

#[test]
fn with_a_password_file_only_listed_users_with_the_right_password_get_in() {
    let stats = || request("GET", "/api/v1/stats");
    let got = answers(
        protected(),
        vec![
            stats(),
            with_basic(stats(), "admin", "wrong"),
            with_basic(stats(), "reader", "secret"),
            with_basic(stats(), "admin", "secret"),
            with_basic(request("GET", "/"), "admin", "secret"),
        ],
    );
    let status: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(status, [401, 401, 401, 200, 200]);
    assert!(got[0]
        .headers
        .iter()
        .any(|(n, v)| n == "WWW-Authenticate" && v.starts_with("Basic ")));
    // The dashboard logs in over MQTT with the credentials it was fetched with.
    let page = String::from_utf8_lossy(&got[4].body);
    assert!(page.contains(r#""username":"admin""#));
    assert!(page.contains(r#""password":"secret""#));
}
