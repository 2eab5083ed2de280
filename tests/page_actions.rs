//! The operators' actions on the status page, end to end over HTTP: acknowledging an event
//! of `edge-agent demo` (its mill cavitating at 600× real time, its embedded broker in the
//! ERP's place), and trusting the certificate of a real async-opcua server on loopback the
//! agent rejected (Debian's mosquitto in the ERP's place). Each action is an audit event the
//! ERP receives over MQTT; a viewer, and a request without the CSRF token, are refused.

mod support;

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use edge_drivers::sim::opcua_server::{OpcuaSim, SimOptions};
use serde_json::{json, Value};
use support::agent::{base_config, AgentProcess};
use support::broker::Mosquitto;
use support::demo::Demo;
use support::metric;
use support::page::{add_user, Session};
use support::subscriber::Subscriber;
use support::{free_port, loopback, wait_for, wait_listening};

const LIMIT: Duration = Duration::from_secs(30);
const ALICE: &str = "alice-operator-1";
const BOB: &str = "bob-viewer-22";

/// Asks `ask` every 200 ms until `check` finds what it wants in the answer, or panics
/// after `limit` with the last answer.
async fn poll<F, Fut>(what: &str, limit: Duration, mut ask: F, check: impl Fn(&Value) -> Option<Value>) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let start = Instant::now();
    loop {
        let answer = ask().await;
        if let Some(found) = check(&answer) {
            return found;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}; last answer: {answer:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The events the ERP received of `kind`.
fn received(erp: &Subscriber, kind: &str) -> Vec<Value> {
    erp.all().into_iter().filter(|m| m.topic.ends_with("/events") && m.json["kind"] == kind).map(|m| m.json).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_acknowledges_an_anomaly_once_and_the_erp_receives_one_audit_event() {
    // Given the demo mill at 600× with a pump cavitation after a second, an operator and a viewer
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "alice", "operator", ALICE);
    add_user(&users, "bob", "viewer", BOB);
    let args: [&OsStr; 6] =
        ["--users-file".as_ref(), users.as_os_str(), "--speed".as_ref(), "600".as_ref(), "--fault".as_ref(), "cavitation@1s".as_ref()];
    let demo = Demo::start(dir.path(), "127.0.0.1", &args);
    wait_listening(loopback(demo.web), LIMIT).await;
    // And the ERP on the demo's broker
    let erp = Subscriber::start(demo.mqtt, "plant/#").await;
    let (alice, bob) = (Session::login(demo.web, "alice", ALICE).await, Session::login(demo.web, "bob", BOB).await);

    // When the pump cavitates, then the anomaly is listed, not acknowledged
    let events = || async { alice.get("/api/events?limit=500").await.json() };
    let find = |kind: &'static str| move |list: &Value| list["events"].as_array()?.iter().find(|e| e["kind"] == kind).cloned();
    let anomaly = poll("the anomaly on the page", LIMIT, events, find("anomaly_started")).await;
    assert_eq!((anomaly["severity"].as_str(), &anomaly["acknowledged_by"]), (Some("warning"), &Value::Null), "{anomaly:#}");
    let id = anomaly["id"].as_str().unwrap().to_string();
    let ack = format!("/api/events/{id}/ack");

    // When the viewer acknowledges it with his own CSRF token, then his role refuses it
    let r = bob.post(&ack).await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("role")), "{r:?}");
    // When the operator's request lacks the CSRF token, then it is refused
    let r = alice.post_without_csrf(&ack).await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("csrf")), "{r:?}");
    // When she acknowledges an event that does not exist, then 404 names it
    let r = alice.post("/api/events/demo-gw-01-999999/ack").await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("\"demo-gw-01-999999\""), "{r:?}");
    // When she acknowledges an info event, then there is nothing to acknowledge
    let loaded = find("model_loaded")(&alice.get("/api/events?limit=500").await.json()).expect("a model_loaded event");
    let r = alice.post(&format!("/api/events/{}/ack", loaded["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 409, "{r:?}");

    // When she acknowledges the anomaly
    let r = alice.post(&ack).await;
    // Then it is hers
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((r.json()["acknowledged_by"].as_str(), r.json()["already"].as_bool()), (Some("alice"), Some(false)), "{r:?}");
    // And the ERP receives the audit event: the anomaly, her name and her address, valid
    let audit = wait_for("event_acknowledged at the ERP", LIMIT, || received(&erp, "event_acknowledged").pop()).await;
    assert_eq!(
        audit["details"],
        json!({ "event_id": id, "event_kind": "anomaly_started", "event_severity": "warning", "user": "alice", "address": "127.0.0.1" }),
        "{audit:#}"
    );
    assert_eq!((audit["asset"].clone(), audit["severity"].as_str()), (anomaly["asset"].clone(), Some("info")), "{audit:#}");
    let schema = support::schema("event.schema.json");
    assert!(schema.is_valid(&audit), "not valid against event.schema.json: {audit:#}");
    // And the page's list says who acknowledged it, and when
    let listed = find("anomaly_started")(&events().await).unwrap();
    assert_eq!(listed["acknowledged_by"], "alice", "{listed:#}");
    assert!(listed["acknowledged_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{listed:#}");

    // When she presses it again, then the answer says it was done, by her, and nothing more is sent
    let r = alice.post(&ack).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((r.json()["already"].as_bool(), r.json()["acknowledged_by"].as_str()), (Some(true), Some("alice")), "{r:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received(&erp, "event_acknowledged").len(), 1, "a second audit event was sent");

    // And /metrics counts each outcome and the refusals
    let metrics = alice.get("/metrics").await.body;
    let action =
        |result: &str| metric(&metrics, &format!("edge_agent_web_operator_actions_total{{action=\"acknowledge\",result=\"{result}\"}}"));
    assert_eq!([action("done"), action("already"), action("not_found"), action("invalid")], [1, 1, 1, 1]);
    assert!(metric(&metrics, "edge_agent_web_requests_refused_total{reason=\"role\"}") >= 1);
    assert!(metric(&metrics, "edge_agent_web_requests_refused_total{reason=\"csrf\"}") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_trusts_a_rejected_server_certificate_and_the_device_connects_without_waiting_out_its_back_off() {
    // Given a server offering Basic256Sha256 SignAndEncrypt, never seen by the agent, and the ERP
    let dir = tempfile::tempdir().unwrap();
    let plc = OpcuaSim::start(SimOptions {
        pki_dir: dir.path().join("server-pki"),
        secure: true,
        user: None,
        x509_user: None,
        nodes: vec![("Speed".into(), 1480.5f64.into())],
    })
    .unwrap();
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    // And the agent, with an operator, waiting at least a minute between two session attempts
    let users = dir.path().join("users");
    add_user(&users, "alice", "operator", ALICE);
    let web = free_port();
    let base = base_config(&dir.path().join("data"), broker.port, web, r#"flush_interval = "200ms""#);
    let config = format!(
        r#"{base}users_file = "{users}"

[[devices]]
name = "press"
protocol = "opcua"
timeout = "2s"
[devices.opcua]
endpoint = "{endpoint}"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
publishing_interval = "100ms"
reconnect_min = "2m"
reconnect_max = "4m"
[[devices.tags]]
name = "speed"
node_id = "ns=2;s=Speed"
"#,
        users = users.display(),
        endpoint = plc.endpoint()
    );
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));
    wait_listening(loopback(web), LIMIT).await;
    let alice = Session::login(web, "alice", ALICE).await;

    // When the agent first connects, then the server's certificate is refused and waits for
    // trust under the device whose endpoint host it names
    let certs = || async { alice.get("/api/opcua/certificates").await.json() };
    let cert = poll("a certificate awaiting trust", LIMIT, certs, |c| c["certificates"].as_array()?.first().cloned()).await;
    assert_eq!(cert["devices"], json!(["press"]), "{cert:#}");
    assert!(cert["hosts"].as_array().unwrap().contains(&json!("127.0.0.1")), "{cert:#}");
    assert_eq!((cert["valid_now"].as_bool(), cert["error"].is_null()), (Some(true), true), "{cert:#}");
    let thumbprint = cert["thumbprint"].as_str().unwrap().to_string();
    assert_eq!(thumbprint.len(), 40, "{cert:#}");
    let status = alice.get("/api/status").await.json();
    assert_eq!(status["devices"]["press"]["connected"], false, "{:#}", status["devices"]["press"]);

    // When the operator trusts it on the page
    let trusted_at = Instant::now();
    let r = alice.post(&format!("/api/opcua/certificates/{thumbprint}/trust")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["devices"], json!(["press"]), "{r:?}");

    // Then the device connects at once, not after its back-off of a minute or more
    let connected = || async { alice.get("/api/status").await.json() };
    poll("the device connected", Duration::from_secs(20), connected, |s| {
        (s["devices"]["press"]["connected"] == true).then_some(json!(true))
    })
    .await;
    assert!(trusted_at.elapsed() < Duration::from_secs(20), "connected only after {:?}", trusted_at.elapsed());
    // And nothing waits for trust any more
    assert_eq!(certs().await["certificates"], json!([]));
    // And the ERP receives the audit event: the certificate, the device and the operator
    let audit = wait_for("certificate_trusted at the ERP", LIMIT, || received(&erp, "certificate_trusted").pop()).await;
    let d = &audit["details"];
    assert_eq!(
        (d["thumbprint"].as_str(), d["user"].as_str(), d["address"].as_str()),
        (Some(&*thumbprint), Some("alice"), Some("127.0.0.1"))
    );
    assert_eq!((&d["devices"], audit["asset"].as_str()), (&json!(["press"]), Some("gw-test")), "{audit:#}");
    assert!(support::schema("event.schema.json").is_valid(&audit), "not valid against event.schema.json: {audit:#}");

    // When it is trusted again, then that is no change; when the thumbprint is wrong, it is refused
    let again = alice.post(&format!("/api/opcua/certificates/{thumbprint}/trust")).await;
    assert_eq!((again.status, again.json()["already"].as_bool()), (200, Some(true)), "{again:?}");
    assert_eq!(alice.post("/api/opcua/certificates/abc/trust").await.status, 400);
    assert_eq!(alice.post(&format!("/api/opcua/certificates/{}/trust", "0".repeat(40))).await.status, 404);
    assert_eq!(received(&erp, "certificate_trusted").len(), 1, "a second audit event was sent");
    let metrics = alice.get("/metrics").await.body;
    let action = |result: &str| {
        metric(&metrics, &format!("edge_agent_web_operator_actions_total{{action=\"trust_certificate\",result=\"{result}\"}}"))
    };
    assert_eq!([action("done"), action("already"), action("invalid"), action("not_found")], [1, 1, 1, 1]);
    assert!(agent.terminate(Duration::from_secs(10)), "the agent did not exit cleanly on SIGTERM");
}
