//! A session handed from one node to another, over NATS request/reply.
//!
//! Each node answers on a subject of its own (`rc.n.<node>.session`). The node a client came
//! to, having taken its id (`owners`), sends the client id there with a reply subject of its
//! own, and whether it wants the session (clean start 0). The old node's shards remove the
//! session (closing its connection with 0x8E Session taken over) and write it out
//! (`shard::carry`); the answer comes back in parts of at most the server's maximum payload,
//! each with header `Rc-Part: i/n` (`0/0`: no session). The asking node waits at most
//! `FETCH_WAIT`: a node that is gone (NATS answers "no responders" at once) or does not answer
//! in time leaves the client with a fresh session, and the log says so.

use super::{Inbound, Surrender};
use async_nats::{Client, HeaderMap, Subject};
use bytes::{Bytes, BytesMut};
use futures_lite::StreamExt;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Header of a request: `1` when the session is wanted, `0` when it is to be dropped.
const STATE_HEADER: &str = "Rc-State";
/// Header of a request: the revision of the owner record the claimant replaced.
const REPLACED_HEADER: &str = "Rc-Replaced";
/// Header of each part of an answer: `i/n`.
const PART_HEADER: &str = "Rc-Part";
/// Longest a node waits for another to hand over a session.
pub(super) const FETCH_WAIT: Duration = Duration::from_secs(3);
/// Most parts an answer may have (a session is bounded by the per-session queue limits;
/// this only keeps a bad answer from growing without end).
const PARTS_MAX: usize = 4096;
/// Room left in each part for the headers under the server's maximum payload.
const PART_HEADROOM: usize = 512;

/// A hand-over asked of this node.
pub(super) struct Request {
    /// Where to answer.
    pub(super) reply: Subject,
    pub(super) client_id: String,
    /// Whether the claimant wants the session (clean start 0).
    pub(super) wants_state: bool,
    /// The revision of the owner record the claimant replaced.
    pub(super) replaced: u64,
}

/// The subject node `node` answers hand-over requests on.
pub(super) fn node_subject(node: &str) -> String {
    // Node names are letters, digits, `_` and `-` (checked by the config): a valid token.
    format!("rc.n.{node}.session")
}

/// The hand-over request a NATS message carries; None for one ringcast did not write.
pub(super) fn request_of(message: async_nats::Message) -> Option<Request> {
    let header = |name| {
        let value = message.headers.as_ref().and_then(|h| h.get(name));
        value.map(|v| v.as_str().to_string()).unwrap_or_default()
    };
    let wants_state = header(STATE_HEADER) == "1";
    let replaced = header(REPLACED_HEADER).parse().unwrap_or(0);
    Some(Request {
        client_id: String::from_utf8(message.payload.to_vec()).ok()?,
        reply: message.reply?,
        wants_state,
        replaced,
    })
}

/// Has the shards give up the requested session, and answers with it.
pub(super) async fn hand_over(
    client: Client,
    shards: Vec<mpsc::Sender<Inbound>>,
    request: Request,
) {
    let session = surrender(&shards, &request.client_id, request.wants_state).await;
    respond(client, request.reply, session).await;
}

/// Asks every shard to give up `client_id`'s session; returns it as the one holding it wrote
/// it (when wanted).
pub(super) async fn surrender(
    shards: &[mpsc::Sender<Inbound>],
    client_id: &str,
    wants_state: bool,
) -> Option<Bytes> {
    let mut answers = Vec::with_capacity(shards.len());
    for shard in shards {
        let (reply, answer) = oneshot::channel();
        let surrender = Surrender {
            client_id: client_id.to_string(),
            wants_state,
            reply,
        };
        if shard.send(Inbound::Surrender(surrender)).await.is_err() {
            return None;
        }
        answers.push(answer);
    }
    let mut session = None;
    for answer in answers {
        if let Ok(Some(bytes)) = answer.await {
            session = Some(bytes);
        }
    }
    session
}

/// Answers a request with `session`, in parts.
pub(super) async fn respond(client: Client, reply: Subject, session: Option<Bytes>) {
    let part_max = (client.server_info().max_payload)
        .saturating_sub(PART_HEADROOM)
        .max(PART_HEADROOM);
    let parts: Vec<Bytes> = match &session {
        Some(bytes) => (0..bytes.len().div_ceil(part_max))
            .map(|i| bytes.slice(i * part_max..((i + 1) * part_max).min(bytes.len())))
            .collect(),
        None => Vec::new(),
    };
    let n = parts.len();
    let parts = if n == 0 {
        vec![(String::from("0/0"), Bytes::new())]
    } else {
        parts
            .into_iter()
            .enumerate()
            .map(|(i, part)| (format!("{}/{n}", i + 1), part))
            .collect()
    };
    for (label, part) in parts {
        let mut headers = HeaderMap::new();
        headers.insert(PART_HEADER, label.as_str());
        if let Err(e) = client
            .publish_with_headers(reply.clone(), headers, part)
            .await
        {
            tracing::warn!("cluster: cannot answer a session request: {e}");
            return;
        }
    }
    let _ = client.flush().await;
}

/// Asks node `node` for `client_id`'s session (or, without `wants_state`, to drop it).
pub(super) async fn fetch(
    client: &Client,
    node: &str,
    client_id: &str,
    wants_state: bool,
    replaced: u64,
) -> Option<Bytes> {
    let asking = ask(client, node, client_id, wants_state, replaced);
    let asked = tokio::time::timeout(FETCH_WAIT, asking).await;
    let why = match asked {
        Ok(Ok(session)) => return session,
        Ok(Err(why)) => why,
        Err(_) => format!("no answer within {} s", FETCH_WAIT.as_secs()),
    };
    tracing::warn!(
        "cluster: node {node} did not hand over the session of client {client_id:?} ({why}): it starts afresh here"
    );
    None
}

async fn ask(
    client: &Client,
    node: &str,
    client_id: &str,
    wants_state: bool,
    replaced: u64,
) -> Result<Option<Bytes>, String> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(STATE_HEADER, if wants_state { "1" } else { "0" });
    headers.insert(REPLACED_HEADER, replaced.to_string().as_str());
    let payload = Bytes::from(client_id.to_string());
    client
        .publish_with_reply_and_headers(node_subject(node), inbox, headers, payload)
        .await
        .map_err(|e| e.to_string())?;
    let mut parts: Vec<Bytes> = Vec::new();
    while let Some(message) = replies.next().await {
        if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err("the node is not connected to NATS".into());
        }
        let label = message.headers.as_ref().and_then(|h| h.get(PART_HEADER));
        let (i, n) = label
            .and_then(|l| l.as_str().split_once('/'))
            .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
            .ok_or("an answer without its part number")?;
        if n == 0 {
            return Ok(None);
        }
        if i != parts.len() + 1 || n > PARTS_MAX || i > n {
            return Err(format!("part {i}/{n} out of order"));
        }
        parts.push(message.payload);
        if i == n {
            let mut whole = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            parts.iter().for_each(|p| whole.extend_from_slice(p));
            return Ok(Some(whole.freeze()));
        }
    }
    Err("the answer stopped".into())
}
