//! JetStream KV buckets the nodes share (retained messages, client-id owners): opened, or
//! made when missing, waiting for JetStream to come up.

use crate::config::ClusterConfig;
use async_nats::jetstream::kv;
use async_nats::Client;
use std::time::Duration;

/// How long a node's claims and retained changes wait for JetStream at start-up (a new NATS
/// cluster elects its JetStream leader a few seconds after its servers start, and on a busy
/// host it took over 30 s before it could place a bucket's replicas: "no suitable peers for
/// placement"). Past it the node serves its clients alone and keeps trying (`open_bucket`).
pub(super) const JETSTREAM_WAIT: Duration = Duration::from_secs(60);

/// Between tries to open a bucket, before `JETSTREAM_WAIT` and after.
const RETRY_SOON: Duration = Duration::from_millis(250);
const RETRY_LATER: Duration = Duration::from_secs(2);

/// The JetStream stream of KV bucket `bucket`, as the KV layer of NATS' clients makes it
/// (one value per key, rollups allowed, direct gets).
fn bucket_stream(bucket: &str, config: &ClusterConfig) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{Config, DiscardPolicy};
    Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: config.kv_replicas,
        discard: DiscardPolicy::New,
        ..Default::default()
    }
}

/// Opens a KV bucket, making it when it does not exist, waiting for JetStream as long as it
/// takes: a node started before its NATS servers' JetStream (or while it cannot place the
/// replicas) joins when it can. Says so once `JETSTREAM_WAIT` has passed.
pub(super) async fn open_bucket(
    client: &Client,
    config: &ClusterConfig,
    bucket: &str,
) -> kv::Store {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + JETSTREAM_WAIT;
    let mut told = false;
    loop {
        if let Ok(store) = js.get_key_value(bucket).await {
            return store;
        }
        // The stream a KV bucket is, made directly: async-nats' `create_key_value` first
        // reads the account's info, which it cannot parse from nats-server 2.9.
        let made = js.create_stream(bucket_stream(bucket, config)).await;
        let Err(e) = made else {
            continue; // open it with `get_key_value`
        };
        let late = tokio::time::Instant::now() >= deadline;
        if late && !told {
            told = true;
            tracing::error!("cluster: no bucket {bucket} after {JETSTREAM_WAIT:?} (is JetStream on, with {} servers to place its replicas?): {e}; still trying", config.kv_replicas);
        } else {
            tracing::debug!("cluster: bucket {bucket} not made yet: {e}");
        }
        tokio::time::sleep(if late { RETRY_LATER } else { RETRY_SOON }).await
    }
}
