//! The uplink over TLS and with a login: real mosquitto with a TLS listener (client
//! certificates required, or a password file), a test PKI made with the openssl CLI, the
//! real agent binary. The test's own subscriber reads on a second, plain listener of the
//! same broker.

mod support;
mod support_uplink;

use std::time::Duration;

use support::agent::AgentProcess;
use support::subscriber::Subscriber;
use support::{free_port, wait_for};
use support_uplink::{agent_config, counting_plc, password_file, Broker, Listener, Pki};
use tokio_util::sync::CancellationToken;

fn toml_path(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_arrives_through_tls_with_a_client_certificate() {
    // Given a broker whose TLS listener requires a client certificate signed by our CA
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new_ca(dir.path(), "plant");
    let server = pki.server("broker");
    let (client_cert, client_key) = pki.client("gw-test");
    let tls = Listener::tls(&pki.ca(), &server, "require_certificate true\nallow_anonymous true\n");
    let plain = Listener::plain();
    let _broker = Broker::start(&[&tls, &plain]).await;
    let erp = Subscriber::start(plain.port, "plant/#").await;

    // When the agent connects to the TLS listener with its certificate
    let keys = format!(
        "[mqtt.tls]\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}\n",
        toml_path(&pki.ca()),
        toml_path(&client_cert),
        toml_path(&client_key)
    );
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, agent_config(&dir.path().join("data"), tls.port, plc, free_port(), &keys)).unwrap();
    let agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // Then telemetry and the online status arrive
    wait_for("3 batches through TLS", Duration::from_secs(30), || (erp.batch_seqs().len() >= 3).then_some(())).await;
    let online = erp.all().into_iter().any(|m| m.topic.ends_with("/status") && m.json["state"] == "online");
    assert!(online, "no online status: {:?}", erp.all());
    assert!(!agent.log_text().contains("connect failed"), "{}", agent.log_text());
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_refused_with_a_clear_error() {
    // Given a TLS broker whose certificate is signed by the plant CA
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new_ca(dir.path(), "plant");
    let server = pki.server("broker");
    let tls = Listener::tls(&pki.ca(), &server, "allow_anonymous true\n");
    let plain = Listener::plain();
    let _broker = Broker::start(&[&tls, &plain]).await;
    let erp = Subscriber::start(plain.port, "plant/#").await;

    // When the agent trusts another CA only
    let other = Pki::new_ca(dir.path(), "other");
    let keys = format!("[mqtt.tls]\nca_file = {}\n", toml_path(&other.ca()));
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, agent_config(&dir.path().join("data"), tls.port, plc, free_port(), &keys)).unwrap();
    let agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // Then the log says the broker's certificate is not signed by that CA, naming the file
    let line = wait_for("the TLS error in the agent log", Duration::from_secs(20), || {
        agent.log_text().lines().find(|l| l.contains("not signed by the CA in mqtt.tls.ca_file")).map(str::to_string)
    })
    .await;
    assert!(line.contains("other-ca.pem") && line.contains("UnknownIssuer"), "{line}");
    // and nothing is published, while batches are kept for later
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(erp.all().is_empty(), "published despite the wrong CA: {:?}", erp.all());
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_and_the_right_one_from_password_file_works() {
    // Given a TLS broker that requires a login from its password file
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new_ca(dir.path(), "plant");
    let server = pki.server("broker");
    let passwords = dir.path().join("mosquitto.passwd");
    password_file(&passwords, "gw-test", "right horse battery");
    let tls = Listener::tls(&pki.ca(), &server, &format!("allow_anonymous false\npassword_file {}\n", passwords.display()));
    let plain = Listener::plain();
    let _broker = Broker::start(&[&tls, &plain]).await;
    let erp = Subscriber::start(plain.port, "plant/#").await;
    let secret = dir.path().join("mqtt-password");
    let data = dir.path().join("data");
    let cfg = dir.path().join("agent.toml");
    let keys = format!("username = \"gw-test\"\npassword_file = {}\n[mqtt.tls]\nca_file = {}\n", toml_path(&secret), toml_path(&pki.ca()));
    std::fs::write(&cfg, agent_config(&data, tls.port, plc, free_port(), &keys)).unwrap();

    // When the agent logs in with a wrong password
    std::fs::write(&secret, "wrong staple\n").unwrap();
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent-wrong.log"));
    // Then the log says the login was refused and where the password came from
    let line = wait_for("the login error in the agent log", Duration::from_secs(20), || {
        agent.log_text().lines().find(|l| l.contains("refused the login")).map(str::to_string)
    })
    .await;
    assert!(line.contains("mqtt.username = \\\"gw-test\\\"") || line.contains("mqtt.username = \"gw-test\""), "{line}");
    assert!(line.contains("mqtt.password_file") && line.contains("mqtt-password"), "{line}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(erp.batch_seqs().is_empty(), "published without a valid login");
    assert!(agent.terminate(Duration::from_secs(10)), "agent did not stop cleanly");

    // When it is restarted with the right password (one trailing newline in the file)
    std::fs::write(&secret, "right horse battery\n").unwrap();
    let _agent = AgentProcess::start(&cfg, dir.path().join("agent-right.log"));

    // Then telemetry arrives, starting with what was stored while the login failed
    wait_for("telemetry after the login", Duration::from_secs(30), || {
        let seqs = erp.batch_seqs();
        (seqs.contains(&1) && seqs.len() >= 5).then_some(())
    })
    .await;
    let first = erp.telemetry().into_iter().find(|b| b["batch_seq"] == 1).unwrap();
    assert_eq!(first["historical"], true, "{first}");
    cancel.cancel();
}
