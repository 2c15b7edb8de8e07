//! Kafka for the end-to-end tests: [`testkit::kafka`], with the topics of the domain's aggregate
//! types.

pub use testkit::kafka::{PARTITIONS, PrivateBroker, shared_brokers};
pub use testkit::unique;

/// Creates `<prefix><aggregate_type>` for every aggregate type, as the relay would.
pub async fn create_topics(brokers: &str, prefix: &str) {
    testkit::kafka::create_topics(brokers, prefix, &command_svc::relay::AGGREGATE_TYPES).await;
}
