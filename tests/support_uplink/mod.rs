//! Helpers for the uplink's end-to-end tests: a test PKI made with the `openssl` CLI, a
//! mosquitto with several listeners (TLS, client certificates, password file), the agent's
//! config with extra `[mqtt]` keys, a Modbus server and a look at `/api/status`.
//! Uses `tests/support` (declared next to this module by each test file).
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edge_drivers::sim::register_server::{self, RegisterBank, SharedBank};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::{free_port, loopback, wait_listening};

pub const TAGS: &str = r#"
[[devices.tags]]
name = "counter"
table = "holding"
address = 0
type = "u16"
"#;

/// A Modbus server on loopback with one holding register counting up every 50 ms.
pub async fn counting_plc(cancel: &CancellationToken) -> u16 {
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &[0]);
    let bank: SharedBank = bank.shared();
    let (listener, addr) = register_server::bind(loopback(0)).await.expect("bind the Modbus server");
    tokio::spawn(register_server::serve(listener, bank.clone(), cancel.clone()));
    let c = cancel.clone();
    tokio::spawn(async move {
        let mut n: u16 = 0;
        while !c.is_cancelled() {
            n = n.wrapping_add(1);
            if let Ok(mut b) = bank.write() {
                b.set_holding(0, &[n]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    addr.port()
}

/// The agent's config (from `tests/support/agent.rs`) with `mqtt_keys` added to `[mqtt]`
/// (plain keys first, then sub-tables such as `[mqtt.tls]`), and no random start delay.
pub fn agent_config(data_dir: &Path, mqtt_port: u16, modbus_port: u16, web_port: u16, mqtt_keys: &str) -> String {
    let base = crate::support::agent::config(data_dir, mqtt_port, modbus_port, web_port, TAGS);
    // At the end of `[mqtt]`, which the `[store]` table follows in the template.
    let anchor = "\n[store]\n";
    assert!(base.contains("\n[mqtt]\n") && base.contains(anchor), "the config template changed: {base}");
    // The template may already switch the delay off.
    let delay = if base.contains("start_delay_max") { "" } else { "start_delay_max = \"0s\"\n" };
    base.replacen(anchor, &format!("\n{delay}{mqtt_keys}\n{anchor}"), 1)
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run {what} ({e}); the TLS tests need the openssl CLI and mosquitto: apt-get install -y openssl mosquitto")
    });
    assert!(out.status.success(), "{what} failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A CA and the certificates it signs, as PEM files in `dir`.
pub struct Pki {
    pub dir: PathBuf,
    pub name: String,
}

impl Pki {
    /// A new CA `{dir}/{name}-ca.pem` (EC P-256, valid 2 days).
    pub fn new_ca(dir: &Path, name: &str) -> Self {
        let pki = Pki { dir: dir.to_path_buf(), name: name.to_string() };
        let cnf = dir.join(format!("{name}-ca.cnf"));
        std::fs::write(
            &cnf,
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = edge-agent test CA {name}\n[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n"
            ),
        )
        .expect("write the CA's openssl config");
        let key = pki.key(&format!("{name}-ca"));
        run(
            "openssl req -x509 (test CA)",
            Command::new("openssl")
                .args(["req", "-x509", "-new", "-sha256", "-days", "2", "-extensions", "v3_ca", "-key"])
                .arg(&key)
                .arg("-config")
                .arg(&cnf)
                .arg("-out")
                .arg(pki.ca()),
        );
        pki
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    fn key(&self, stem: &str) -> PathBuf {
        let key = self.dir.join(format!("{stem}.key"));
        run(
            "openssl genpkey",
            Command::new("openssl").args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]).arg(&key),
        );
        key
    }

    /// A server certificate for 127.0.0.1 and localhost: `(cert, key)`.
    pub fn server(&self, stem: &str) -> (PathBuf, PathBuf) {
        self.leaf(stem, "serverAuth", "subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    }

    /// A client certificate: `(cert, key)`.
    pub fn client(&self, stem: &str) -> (PathBuf, PathBuf) {
        self.leaf(stem, "clientAuth", "")
    }

    fn leaf(&self, stem: &str, usage: &str, san: &str) -> (PathBuf, PathBuf) {
        let key = self.key(stem);
        let cnf = self.dir.join(format!("{stem}.cnf"));
        std::fs::write(
            &cnf,
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {stem}\n[ext]\nbasicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = {usage}\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n{san}"
            ),
        )
        .expect("write the leaf's openssl config");
        let csr = self.dir.join(format!("{stem}.csr"));
        run(
            "openssl req (CSR)",
            Command::new("openssl").args(["req", "-new", "-key"]).arg(&key).arg("-config").arg(&cnf).arg("-out").arg(&csr),
        );
        let cert = self.dir.join(format!("{stem}.pem"));
        let ca_key = self.dir.join(format!("{}-ca.key", self.name));
        run(
            "openssl x509 -req (sign)",
            Command::new("openssl")
                .args(["x509", "-req", "-sha256", "-days", "2", "-CAcreateserial", "-extensions", "ext", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(self.ca())
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&cnf)
                .arg("-out")
                .arg(&cert),
        );
        (cert, key)
    }
}

/// `mosquitto_passwd -b -c FILE user password`.
pub fn password_file(path: &Path, user: &str, password: &str) {
    run("mosquitto_passwd", Command::new(mosquitto_passwd_binary()).arg("-b").arg("-c").arg(path).arg(user).arg(password));
}

fn mosquitto_passwd_binary() -> PathBuf {
    ["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mosquitto_passwd"))
}

fn mosquitto_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("mosquitto")
    }
}

/// One listener of [`Broker`]: its port and the lines of `mosquitto.conf` after
/// `listener PORT 127.0.0.1` (TLS files, `require_certificate`, `password_file`, …).
pub struct Listener {
    pub port: u16,
    pub settings: String,
}

impl Listener {
    /// Anonymous plain MQTT, for the test's own subscriber.
    pub fn plain() -> Self {
        Listener { port: free_port(), settings: "allow_anonymous true\n".into() }
    }

    /// TLS with the server certificate `(cert, key)` signed by `ca`; `extra` adds settings.
    pub fn tls(ca: &Path, server: &(PathBuf, PathBuf), extra: &str) -> Self {
        Listener {
            port: free_port(),
            settings: format!("cafile {}\ncertfile {}\nkeyfile {}\n{extra}", ca.display(), server.0.display(), server.1.display()),
        }
    }
}

/// mosquitto with the given listeners (security settings per listener), killed on drop.
pub struct Broker {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    pub async fn start(listeners: &[&Listener]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for mosquitto");
        let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        let mut conf =
            format!("per_listener_settings true\nuser {user}\npersistence false\nlog_dest file {}/mosquitto.log\n", dir.path().display());
        for l in listeners {
            conf.push_str(&format!("\nlistener {} 127.0.0.1\n{}", l.port, l.settings));
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto ({e}); install it: apt-get install -y mosquitto"));
        let broker = Broker { dir, child: Some(child) };
        for l in listeners {
            wait_listening(loopback(l.port), Duration::from_secs(10)).await;
        }
        broker
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- mosquitto log ---\n{}", self.log());
        }
    }
}

/// `GET /api/status` of the agent's status page, as JSON (`Null` if it does not answer).
pub async fn api_status(web_port: u16) -> serde_json::Value {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(loopback(web_port)).await.ok()?;
        stream.write_all(b"GET /api/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8(response).ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        serde_json::from_str(&body).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), fetch).await.ok().flatten().unwrap_or(serde_json::Value::Null)
}

/// The retained message on `topic` as an MQTT 5 client (`rumqttc::v5`, clean start) sees
/// it right after subscribing; `None` if none arrives within 5 s.
pub async fn v5_retained(port: u16, topic: &str) -> Option<serde_json::Value> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let mut opts = MqttOptions::new(format!("erp-v5-{port}-{}", crate::support::free_port()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5)).set_clean_start(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let received = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(topic, QoS::AtLeastOnce).await.expect("queue the v5 subscription");
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                    return serde_json::from_slice::<serde_json::Value>(&p.payload).ok();
                }
                Ok(_) => {}
                Err(e) => panic!("MQTT 5 client: {e}"),
            }
        }
    })
    .await
    .ok()
    .flatten();
    let _ = client.disconnect().await;
    received
}
