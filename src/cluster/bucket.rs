//! JetStream KV buckets the nodes share (retained messages, client-id owners): opened, or
//! made when missing, waiting for JetStream to come up.

use crate::config::ClusterConfig;
use async_nats::jetstream::kv;
use async_nats::Client;

/// How long a node waits for JetStream at start-up (a new NATS cluster elects its JetStream
/// leader a few seconds after its servers start, and on a busy host it took over 30 s before
/// it could place a bucket's replicas: "no suitable peers for placement").
const JETSTREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

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

/// Opens a KV bucket, making it when it does not exist, waiting for JetStream up to
/// `JETSTREAM_WAIT`.
pub(super) async fn open_bucket(
    client: &Client,
    config: &ClusterConfig,
    bucket: &str,
) -> Option<kv::Store> {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + JETSTREAM_WAIT;
    loop {
        if let Ok(store) = js.get_key_value(bucket).await {
            return Some(store);
        }
        // The stream a KV bucket is, made directly: async-nats' `create_key_value` first
        // reads the account's info, which it cannot parse from nats-server 2.9.
        let made = js.create_stream(bucket_stream(bucket, config)).await;
        match made {
            Ok(_) => continue, // open it with `get_key_value`
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::error!("cluster: no bucket {bucket} (is JetStream on?): {e}");
                return None;
            }
            Err(e) => {
                tracing::debug!("cluster: bucket {bucket} not made yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await
            }
        }
    }
}
