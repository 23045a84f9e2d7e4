//! The `AMR_SENSOR` JetStream stream, created at start-up when absent.

use crate::config::{Config, StorageKind};
use amr_proto::subjects::{Subjects, SENSOR_STREAM};
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// Creates the stream if it does not exist; an existing stream is left as its operator set it.
/// Retries until JetStream answers, so a gateway started before NATS still comes up.
pub async fn ensure_sensor_stream(nats: &async_nats::Client, config: &Config, subjects: &Subjects) {
    let js = jetstream::new(nats.clone());
    let stream_config = stream::Config {
        name: SENSOR_STREAM.to_owned(),
        subjects: vec![subjects.sensor_all()],
        max_age: config.sensor_max_age,
        max_bytes: config.sensor_max_bytes,
        num_replicas: config.sensor_replicas,
        storage: match config.sensor_storage {
            StorageKind::File => stream::StorageType::File,
            StorageKind::Memory => stream::StorageType::Memory,
        },
        duplicate_window: config.sensor_duplicate_window,
        ..Default::default()
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match js.get_or_create_stream(stream_config.clone()).await {
            Ok(existing) => {
                let wanted = subjects.sensor_all();
                let mut current = existing.cached_info().config.clone();
                if !current.subjects.contains(&wanted) {
                    // A stream made for another prefix: extend it rather than lose our data.
                    current.subjects.push(wanted.clone());
                    match js.update_stream(current).await {
                        Ok(_) => {
                            tracing::warn!(stream = SENSOR_STREAM, subject = %wanted, "added our subject to an existing stream")
                        }
                        Err(e) => {
                            tracing::error!(stream = SENSOR_STREAM, subject = %wanted, error = %e, "existing stream lacks our subject; sensor data will not be stored")
                        }
                    }
                }
                tracing::info!(stream = SENSOR_STREAM, "sensor stream ready");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ensure the sensor stream yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
