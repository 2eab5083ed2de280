//! A simulated PLC served by a real async-opcua server on loopback, for the tests, the
//! benchmark and the demo.
//!
//! The server runs on its own thread with its own tokio runtime: [`OpcuaSim::stop`]
//! drops that runtime, which closes every socket at once like a killed process (a
//! cancelled server would wait for its clients to leave). [`OpcuaSim::start`] again
//! serves a fresh address space on the same port, with the same certificate.
//!
//! Nodes live in folder `Plant` (browse path `/2:Plant/2:<name>`), NodeIds
//! `ns=2;s=<name>`. [`scalar_nodes`] lists one writable node of every scalar type.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::VariableBuilder;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, InMemoryNodeManager, SimpleNodeManager, SimpleNodeManagerImpl};
use opcua::server::{ServerBuilder, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::{
    ByteString, DataTypeId, DataValue, DateTime, ExtensionObject, Guid, LocalizedText, MessageSecurityMode, NodeId, QualifiedName, Range,
    StatusCode, VariableTypeId,
};

/// The server's value type, for callers without a direct dependency on async-opcua.
pub use opcua::types::Variant;

// Not the application URI: the server's diagnostics node manager owns that namespace.
const NAMESPACE: &str = "urn:edge-agent:sim-plc:plant";
/// The namespace index of the simulated PLC's nodes: `ns=2;s=<name>`, browse names `2:<name>`.
pub const NS: u16 = 2;

/// How the simulated server is set up.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Where the server keeps its certificate and trusted client certificates.
    pub pki_dir: PathBuf,
    /// Also offer Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss
    /// endpoints (Sign and SignAndEncrypt).
    pub secure: bool,
    /// A user that may log in with a password, besides anonymous.
    pub user: Option<(String, String)>,
    /// A user that logs in with this X.509 certificate (DER file), besides anonymous.
    pub x509_user: Option<PathBuf>,
    /// Nodes created at start: (name, initial value).
    pub nodes: Vec<(String, Variant)>,
}

/// One node of every scalar built-in type the driver maps, with a first value.
pub fn scalar_nodes() -> Vec<(String, Variant)> {
    let v: Vec<(&str, Variant)> = vec![
        ("Bool", Variant::Boolean(true)),
        ("SByte", Variant::SByte(-8)),
        ("Byte", Variant::Byte(200)),
        ("Int16", Variant::Int16(-1600)),
        ("UInt16", Variant::UInt16(60_000)),
        ("Int32", Variant::Int32(-320_000)),
        ("UInt32", Variant::UInt32(3_200_000_000)),
        ("Int64", Variant::Int64(-6_400_000_000)),
        ("UInt64", Variant::UInt64(6_400_000_000)),
        ("Float", Variant::Float(1.5)),
        ("Double", Variant::Double(2.25)),
        ("String", Variant::String("batch-42".into())),
        ("DateTime", Variant::DateTime(Box::new(DateTime::ymd_hms(2024, 5, 1, 10, 0, 0)))),
        ("Guid", Variant::Guid(Box::new(Guid::from_bytes([7; 16])))),
        ("ByteString", Variant::ByteString(ByteString::from(vec![0xde, 0xad]))),
        ("LocalizedText", Variant::LocalizedText(Box::new(LocalizedText::new("en", "running")))),
        ("QualifiedName", Variant::QualifiedName(Box::new(QualifiedName::new(2, "Mode")))),
        ("StatusCode", Variant::StatusCode(StatusCode::BadOutOfService)),
    ];
    v.into_iter().map(|(n, v)| (n.to_string(), v)).collect()
}

/// A running (or stopped) simulated OPC-UA server.
pub struct OpcuaSim {
    port: u16,
    options: SimOptions,
    running: Option<Running>,
}

struct Running {
    handle: ServerHandle,
    manager: Arc<InMemoryNodeManager<SimpleNodeManagerImpl>>,
    ns: u16,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl OpcuaSim {
    /// Starts a server on a free loopback port.
    pub fn start(options: SimOptions) -> Result<Self, String> {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = probe.local_addr().map_err(|e| e.to_string())?.port();
        drop(probe);
        let mut sim = Self { port, options, running: None };
        sim.start_again()?;
        Ok(sim)
    }

    /// The endpoint URL, `opc.tcp://127.0.0.1:<port>/`.
    pub fn endpoint(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's PKI directory (its `rejected/` holds client certificates it refused).
    pub fn pki_dir(&self) -> &Path {
        &self.options.pki_dir
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the server abruptly: every connection is closed, every session is gone.
    pub fn stop(&mut self) {
        self.running = None;
    }

    /// Starts the server again on the same port with a fresh address space holding
    /// `options.nodes` (change them first to simulate a PLC download).
    pub fn start_again(&mut self) -> Result<(), String> {
        self.stop();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (options, port) = (self.options.clone(), self.port);
        let thread = std::thread::Builder::new()
            .name(format!("opcua-sim-{port}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let started = rt.block_on(serve(options, port));
                match started {
                    Ok(parts) => {
                        let _ = ready_tx.send(Ok(parts));
                        // Runs until the stop sender is dropped.
                        let _ = stop_rx.recv();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                // Waits for the worker threads, so that the listener and every connection
                // are closed when stop() returns (the port can be bound again at once).
                rt.shutdown_timeout(std::time::Duration::from_secs(2));
            })
            .map_err(|e| e.to_string())?;
        let (handle, manager, ns) = ready_rx.recv().map_err(|e| e.to_string())??;
        self.running = Some(Running { handle, manager, ns, stop: Some(stop_tx), thread: Some(thread) });
        Ok(())
    }

    /// The NodeId of node `name`.
    pub fn node_id(&self, name: &str) -> NodeId {
        NodeId::new(self.running.as_ref().map_or(NS, |r| r.ns), name.to_string())
    }

    /// Sets node `name` to `value` (source timestamp now), notifying subscribers.
    pub fn set(&self, name: &str, value: impl Into<Variant>) -> Result<(), StatusCode> {
        let r = self.running.as_ref().ok_or(StatusCode::BadServerHalted)?;
        let id = NodeId::new(r.ns, name.to_string());
        r.manager.set_value(r.handle.subscriptions(), &id, None, DataValue::new_now(value.into()))
    }

    /// Sets several nodes at once (one lock, one notification pass), source timestamp now.
    pub fn set_many(&self, values: &[(NodeId, Variant)]) -> Result<(), StatusCode> {
        let r = self.running.as_ref().ok_or(StatusCode::BadServerHalted)?;
        r.manager.set_values(r.handle.subscriptions(), values.iter().map(|(id, v)| (id, None, DataValue::new_now(v.clone()))))
    }

    /// Sets node `name` to `value` with status `status` (e.g. `BadSensorFailure`).
    pub fn set_status(&self, name: &str, value: impl Into<Variant>, status: StatusCode) -> Result<(), StatusCode> {
        let r = self.running.as_ref().ok_or(StatusCode::BadServerHalted)?;
        let id = NodeId::new(r.ns, name.to_string());
        r.manager.set_value(r.handle.subscriptions(), &id, None, DataValue::new_now_status(value.into(), status))
    }

    /// Sets node `name` to `value` as a PLC behind the server would: stamped at `source_ts`
    /// by the PLC, and now by the server.
    pub fn set_stamped(&self, name: &str, value: impl Into<Variant>, source_ts: chrono::DateTime<chrono::Utc>) -> Result<(), StatusCode> {
        let r = self.running.as_ref().ok_or(StatusCode::BadServerHalted)?;
        let id = NodeId::new(r.ns, name.to_string());
        let dv = DataValue {
            value: Some(value.into()),
            status: Some(StatusCode::Good),
            source_timestamp: Some(DateTime::from(source_ts)),
            server_timestamp: Some(DateTime::now()),
            ..Default::default()
        };
        r.manager.set_value(r.handle.subscriptions(), &id, None, dv)
    }

    /// The current value of node `name`.
    pub fn get(&self, name: &str) -> Option<Variant> {
        let r = self.running.as_ref()?;
        let id = NodeId::new(r.ns, name.to_string());
        let space = r.manager.address_space().read();
        match space.find(&id)? {
            opcua::server::address_space::NodeType::Variable(v) => {
                v.value(
                    opcua::types::TimestampsToReturn::Neither,
                    &opcua::types::NumericRange::None,
                    &opcua::types::DataEncoding::Binary,
                    0.0,
                )
                .value
            }
            _ => None,
        }
    }

    /// Removes node `name` from the running server (its subscribers get nothing more).
    pub fn remove(&self, name: &str) -> bool {
        let Some(r) = self.running.as_ref() else { return false };
        let id = NodeId::new(r.ns, name.to_string());
        r.manager.address_space().write().delete(&id, true).is_some()
    }

    /// Adds node `name` to the running server.
    pub fn add(&self, name: &str, value: Variant) -> bool {
        let Some(r) = self.running.as_ref() else { return false };
        add_node(&r.manager, r.ns, name, value)
    }

    /// Adds node `name` to the running server as an analog item (type `AnalogItemType`) with
    /// an `EURange` property `low..high`, as a PLC describes a measurement: the server needs
    /// the range for an OPC-UA percent deadband (a percent of the range). Not kept across
    /// [`Self::start_again`].
    pub fn add_analog(&self, name: &str, value: f64, (low, high): (f64, f64)) -> bool {
        let Some(r) = self.running.as_ref() else { return false };
        let id = NodeId::new(r.ns, name.to_string());
        let range = NodeId::new(r.ns, format!("{name}.EURange"));
        let mut space = r.manager.address_space().write();
        VariableBuilder::new(&id, QualifiedName::new(r.ns, name), name)
            .data_type(DataTypeId::Double)
            .value(value)
            .writable()
            .has_type_definition(VariableTypeId::AnalogItemType)
            .organized_by(NodeId::new(r.ns, "Plant"))
            .insert(&mut *space)
            && VariableBuilder::new(&range, QualifiedName::new(0, "EURange"), "EURange")
                .data_type(DataTypeId::Range)
                .value(ExtensionObject::from_message(Range { low, high }))
                .has_type_definition(VariableTypeId::PropertyType)
                .property_of(id)
                .insert(&mut *space)
    }

    /// Makes the server drop every subscription it holds while the sessions that own them
    /// stay up, and says nothing to those sessions: a second session of `options.user`
    /// takes the subscriptions over (TransferSubscriptions; async-opcua's server sends the
    /// old session no `GoodSubscriptionTransferred`) and deletes them. An owner's Publish
    /// requests then get `BadNoSubscription`, or nothing for that subscription. Returns the
    /// ids dropped. Needs `options.user` (the server moves subscriptions only between
    /// sessions of the same user), and the owners must have logged in as that user.
    pub async fn drop_subscriptions(&self) -> Result<Vec<u32>, String> {
        use opcua::client::{ClientBuilder, IdentityToken};
        let r = self.running.as_ref().ok_or("the server is not running")?;
        let (user, pass) = self.options.user.clone().ok_or("drop_subscriptions needs SimOptions::user")?;
        // Subscription ids count up from 1 on each server start; this takes one more.
        let ids: Vec<u32> = (1..r.handle.info().subscription_id_handle.next()).collect();
        let mut client = ClientBuilder::new()
            .application_name("edge-agent sim subscription dropper")
            .application_uri("urn:edge-agent:sim-dropper")
            .pki_dir(self.options.pki_dir.join("dropper"))
            .create_sample_keypair(false)
            .trust_server_certs(true)
            .session_retry_limit(0)
            .client()
            .map_err(|e| e.join("; "))?;
        let url = self.endpoint();
        let endpoint = (url.as_str(), SecurityPolicy::None.to_uri(), MessageSecurityMode::None);
        let work = async {
            let (session, event_loop) =
                client.connect_to_matching_endpoint(endpoint, IdentityToken::new_user_name(user, pass)).await.map_err(|e| e.to_string())?;
            let events = event_loop.spawn();
            if !session.wait_for_connection().await {
                return Err("the dropper's session did not come up".to_string());
            }
            let results = session.transfer_subscriptions(&ids, false).await.map_err(|e| e.to_string())?;
            let moved: Vec<u32> = ids.iter().zip(&results).filter(|(_, r)| r.status_code.is_good()).map(|(id, _)| *id).collect();
            if !moved.is_empty() {
                session.delete_subscriptions(&moved).await.map_err(|e| e.to_string())?;
            }
            let _ = session.disconnect().await;
            events.abort();
            Ok(moved)
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), work).await.map_err(|_| "dropping subscriptions timed out".to_string())?
    }

    /// The node list used on the next [`Self::start_again`].
    pub fn nodes_mut(&mut self) -> &mut Vec<(String, Variant)> {
        &mut self.options.nodes
    }
}

fn add_node(manager: &InMemoryNodeManager<SimpleNodeManagerImpl>, ns: u16, name: &str, value: Variant) -> bool {
    let folder = NodeId::new(ns, "Plant");
    let id = NodeId::new(ns, name.to_string());
    let data_type = value.data_type().map(|t| t.node_id).unwrap_or_else(|| DataTypeId::BaseDataType.into());
    VariableBuilder::new(&id, QualifiedName::new(ns, name), name)
        .data_type(data_type)
        .value(value)
        .writable()
        .organized_by(folder)
        .insert(&mut *manager.address_space().write())
}

/// Binds `addr`, retrying for a few seconds while it is in use: after `stop` the old
/// server's listener may close a moment later (its runtime shuts down in the background), and
/// a client socket elsewhere on the machine can hold the same port as its ephemeral port for a
/// short while. A restart on the same port must not fail on either (it made a test flaky).
async fn bind_when_free(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
        }
    }
}

type Parts = (ServerHandle, Arc<InMemoryNodeManager<SimpleNodeManagerImpl>>, u16);

async fn serve(options: SimOptions, port: u16) -> Result<Parts, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = bind_when_free(addr).await?;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let mut tokens = vec![ANONYMOUS_USER_TOKEN_ID.to_string()];
    let mut builder = ServerBuilder::new()
        .application_name("edge-agent simulated PLC")
        .application_uri("urn:edge-agent:sim-plc")
        .product_uri("urn:edge-agent:sim-plc")
        .host("127.0.0.1")
        .port(port)
        .pki_dir(&options.pki_dir)
        .create_sample_keypair(options.secure)
        .trust_client_certs(true)
        .diagnostics_enabled(false)
        .discovery_urls(vec![url.clone()])
        .with_node_manager(simple_node_manager(NamespaceMetadata { namespace_uri: NAMESPACE.to_string(), ..Default::default() }, "sim"));
    if let Some((user, pass)) = &options.user {
        builder = builder.add_user_token("user", ServerUserToken { user: user.clone(), pass: Some(pass.clone()), ..Default::default() });
        tokens.push("user".into());
    }
    if let Some(cert) = &options.x509_user {
        builder = builder
            .add_user_token("x509", ServerUserToken { user: "x509".into(), x509: Some(cert.display().to_string()), ..Default::default() });
        tokens.push("x509".into());
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    builder = builder.add_endpoint("none", ("/", SecurityPolicy::None, MessageSecurityMode::None, &tokens[..]));
    if options.secure {
        for (id, policy) in [
            ("basic256sha256", SecurityPolicy::Basic256Sha256),
            ("aes128", SecurityPolicy::Aes128Sha256RsaOaep),
            ("aes256", SecurityPolicy::Aes256Sha256RsaPss),
        ] {
            for (mode_id, mode) in [("sign", MessageSecurityMode::Sign), ("sign_encrypt", MessageSecurityMode::SignAndEncrypt)] {
                builder = builder.add_endpoint(format!("{id}_{mode_id}"), ("/", policy, mode, &tokens[..]));
            }
        }
    }
    // Sample and publish as fast as every 10 ms (the library's default is 100 ms), so that
    // the benchmark measures the client, not the server's timer.
    builder = builder.subscription_poll_interval_ms(10);
    builder.limits_mut().subscriptions.min_sampling_interval_ms = 10.0;
    builder.limits_mut().subscriptions.min_publishing_interval_ms = 10.0;
    builder.limits_mut().subscriptions.max_monitored_item_queue_size = 100;
    let (server, handle) = builder.build()?;
    let manager = handle.node_managers().get_of_type::<SimpleNodeManager>().ok_or("no SimpleNodeManager")?;
    let ns = handle.get_namespace_index(NAMESPACE).ok_or("namespace not registered")?;
    if ns != NS {
        return Err(format!("the simulated PLC's namespace has index {ns}, not {NS}"));
    }
    {
        let mut space = manager.address_space().write();
        space.add_folder(&NodeId::new(ns, "Plant"), QualifiedName::new(ns, "Plant"), "Plant", &NodeId::objects_folder_id());
    }
    for (name, value) in &options.nodes {
        add_node(&manager, ns, name, value.clone());
    }
    tokio::spawn(async move {
        if let Err(e) = server.run_with(listener).await {
            tracing::warn!(error = %e, "simulated OPC-UA server ended");
        }
    });
    Ok((handle, manager, ns))
}
