//! Broker failover: the primary broker is down (nothing listens on its port), the
//! failover broker is up. Real mosquitto, real Modbus server, the real agent binary.

mod support;
mod support_uplink;

use std::time::Duration;

use support::agent::AgentProcess;
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::{free_port, wait_for};
use support_uplink::{agent_config, api_status, counting_plc};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_broker_down_telemetry_arrives_at_the_failover_broker() {
    // Given a primary broker nobody listens on and a failover broker that is up
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let primary = free_port();
    let failover = Mosquitto::start().await;
    let erp = Subscriber::start(failover.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let web = free_port();
    let keys = format!("failover_after = 2\n[mqtt.failover]\nhost = \"127.0.0.1\"\nport = {}\n", failover.port);
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, agent_config(&dir.path().join("data"), primary, plc, web, &keys)).unwrap();

    // When the agent starts
    let agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // Then after two failed connects it switches, and telemetry arrives at the failover broker
    wait_for("5 batches at the failover broker", Duration::from_secs(30), || (erp.batch_seqs().len() >= 5).then_some(())).await;
    let log = agent.log_text();
    assert!(log.contains("switching to the other broker"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{primary}: connection refused")), "{log}");
    // and the status page shows the broker in use
    let status = api_status(web).await;
    assert_eq!(status["uplink"]["broker"], format!("127.0.0.1:{}", failover.port), "{status}");
    assert_eq!(status["uplink"]["connected"], true, "{status}");
    // and the batches stored before the switch arrive too (replayed), with no gap
    wait_for("every batch up to the newest", Duration::from_secs(20), || {
        let seqs: std::collections::BTreeSet<u64> = erp.batch_seqs().into_iter().collect();
        let max = *seqs.iter().max()?;
        (1..=max).all(|s| seqs.contains(&s)).then_some(())
    })
    .await;
    cancel.cancel();
}
