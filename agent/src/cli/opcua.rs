//! `edge-agent opcua …`: OPC-UA commissioning and certificate management.
//!
//! - `certs`: the agent's own certificate and the trusted and rejected server ones.
//! - `trust THUMBPRINT`: trusts a rejected server certificate (the operator's action).
//! - `browse --endpoint URL`: the address-space tree with types and values, and
//!   optionally a `[[devices.tags]]` snippet for its variables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use edge_drivers::opcua::config::{parse_node_id, OpcuaConfig};
use edge_drivers::opcua::pki::{self, CertState};
use edge_drivers::opcua::{browse, session, Connection, Identity, PasswordSource};

#[derive(Subcommand, Debug)]
pub enum OpcuaCommand {
    /// List the agent's OPC-UA certificate and the trusted and rejected server certificates.
    Certs {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Trust a rejected server certificate (by 8+ hex digits of its thumbprint, or its file name).
    Trust {
        #[command(flatten)]
        dir: DataDir,
        #[arg(value_name = "THUMBPRINT")]
        selector: String,
    },
    /// Print a server's address space with types and values; optionally a config snippet.
    Browse {
        /// Endpoint URL, e.g. opc.tcp://192.168.1.20:4840/
        #[arg(long)]
        endpoint: String,
        /// Where to start (default: the Objects folder, i=85).
        #[arg(long, value_name = "NODE_ID")]
        node: Option<String>,
        /// How many levels to descend.
        #[arg(long, default_value_t = 3)]
        depth: usize,
        /// Print `[[devices.tags]]` entries for the variables found, after the tree.
        #[arg(long)]
        snippet: bool,
        /// None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss.
        #[arg(long, default_value = "None")]
        security_policy: String,
        /// None, Sign or SignAndEncrypt.
        #[arg(long, default_value = "None")]
        security_mode: String,
        /// Log in as this user; the password comes from the environment variable named by
        /// --password-env.
        #[arg(long)]
        username: Option<String>,
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        #[command(flatten)]
        dir: DataDir,
    },
}

/// Where the agent's PKI is: the data dir of a config, or given directly.
#[derive(clap::Args, Debug)]
pub struct DataDir {
    /// The gateway's config file (its gateway.data_dir holds the PKI).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The agent's data directory (instead of --config).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl DataDir {
    fn resolve(&self) -> anyhow::Result<Option<PathBuf>> {
        match (&self.config, &self.data_dir) {
            (Some(_), Some(_)) => bail!("give --config or --data-dir, not both"),
            (Some(file), None) => {
                let config = crate::config::load_file(file).map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(Some(config.gateway.data_dir))
            }
            (None, Some(dir)) => Ok(Some(dir.clone())),
            (None, None) => Ok(None),
        }
    }

    fn required(&self) -> anyhow::Result<PathBuf> {
        self.resolve()?.context("give --config FILE (or --data-dir DIR) to say whose certificates")
    }
}

/// Runs one `opcua` subcommand; `Some(code)` for a non-zero exit.
pub async fn run(command: OpcuaCommand) -> anyhow::Result<Option<u8>> {
    match command {
        OpcuaCommand::Certs { dir } => {
            let pki = session::pki_dir(&dir.required()?);
            print!("{}", render_certs(&pki)?);
            Ok(None)
        }
        OpcuaCommand::Trust { dir, selector } => {
            let pki = session::pki_dir(&dir.required()?);
            let cert = pki::trust(&pki, &selector)?;
            println!("trusted {} [{}]\n  now {}", cert.subject, cert.thumbprint, cert.file.display());
            println!("The agent uses it on its next connection attempt; no restart needed.");
            Ok(None)
        }
        OpcuaCommand::Browse { endpoint, node, depth, snippet, security_policy, security_mode, username, password_env, dir } => {
            let security_policy = parse_enum(&security_policy, "--security-policy")?;
            let security_mode = parse_enum(&security_mode, "--security-mode")?;
            let identity = match (username, password_env) {
                (None, _) => Identity::Anonymous,
                (Some(user), Some(var)) => Identity::UserName { user, password: PasswordSource::Env(var) },
                (Some(_), None) => bail!("identity = \"username\" without a password source"),
            };
            // The session settings a device gets when its config leaves them out.
            let defaults = OpcuaConfig::default();
            let connection = Connection {
                endpoint,
                security_policy,
                security_mode,
                identity,
                auto_trust_server_certificate: defaults.auto_trust_server_certificate,
                session_timeout: defaults.session_timeout,
            };
            let start = match node {
                Some(n) => parse_node_id(&n).map_err(anyhow::Error::msg)?,
                None => browse::objects_folder(),
            };
            // Without a data dir, a throwaway PKI: fine for security None; a secure
            // endpoint's certificate then has to be trusted again for the agent.
            let (data_dir, throwaway) = match dir.resolve()? {
                Some(d) => (d, false),
                None => (std::env::temp_dir().join(format!("edge-agent-opcua-browse-{}", std::process::id())), true),
            };
            let result = browse_to_stdout(&connection, &session::pki_dir(&data_dir), start, depth, snippet).await;
            if throwaway {
                let _ = std::fs::remove_dir_all(&data_dir);
            }
            result
        }
    }
}

fn parse_enum<T: serde::de::DeserializeOwned>(text: &str, flag: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).with_context(|| format!("{flag}: unknown value {text:?}"))
}

async fn browse_to_stdout(
    connection: &Connection,
    pki: &Path,
    start: edge_drivers::opcua::NodeId,
    depth: usize,
    snippet: bool,
) -> anyhow::Result<Option<u8>> {
    let limit = Duration::from_secs(10);
    let (connection2, pki2) = (connection.clone(), pki.to_path_buf());
    let mut client = tokio::task::spawn_blocking(move || session::build_client(&connection2, &pki2, limit))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot set up the OPC-UA client: {e}"))?;
    let identity = session::identity(&connection.identity).map_err(anyhow::Error::msg)?;
    let connected = match session::connect(&mut client, connection, identity, tokio::time::Instant::now() + limit).await {
        Ok(c) => c,
        Err(e) if e.is_untrusted_certificate() => {
            eprintln!("edge-agent: {e}");
            eprintln!("The server's certificate was stored as rejected in {}.", pki.display());
            eprintln!("Check it with `edge-agent opcua certs`, trust it with `edge-agent opcua trust THUMBPRINT`, and browse again.");
            return Ok(Some(1));
        }
        Err(e) => bail!("{e}"),
    };
    let nodes = browse::browse(&connected.session, start, depth, limit).await.map_err(anyhow::Error::msg)?;
    print!("{}", browse::render_tree(&nodes));
    if snippet {
        println!("\n# Tags for [[devices]] name = \"…\", protocol = \"opcua\":\n");
        print!("{}", browse::config_snippet(&nodes));
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), connected.session.disconnect()).await;
    Ok(None)
}

fn render_certs(pki: &Path) -> anyhow::Result<String> {
    let certs = pki::list(pki)?;
    let mut out = format!("OPC-UA certificates in {}\n", pki.display());
    if certs.is_empty() {
        out.push_str("  none yet: the agent creates its own on the first OPC-UA connection\n");
    }
    for c in certs {
        let state = match c.state {
            CertState::Own => "own",
            CertState::Trusted => "trusted",
            CertState::Rejected => "REJECTED",
        };
        match &c.error {
            Some(e) => out.push_str(&format!("  {state:<9} {}  (unreadable: {e})\n", c.file.display())),
            None => out.push_str(&format!(
                "  {state:<9} {}  {}  valid until {}\n            {}\n",
                c.thumbprint,
                c.subject,
                c.not_after.as_deref().unwrap_or("?"),
                c.file.display()
            )),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_drivers::opcua::config::{SecurityMode, SecurityPolicy};

    #[test]
    fn security_flags_parse_like_the_config() {
        assert_eq!(parse_enum::<SecurityPolicy>("Basic256Sha256", "x").unwrap(), SecurityPolicy::Basic256Sha256);
        assert_eq!(parse_enum::<SecurityPolicy>("Aes128_Sha256_RsaOaep", "x").unwrap(), SecurityPolicy::Aes128Sha256RsaOaep);
        assert_eq!(parse_enum::<SecurityMode>("SignAndEncrypt", "x").unwrap(), SecurityMode::SignAndEncrypt);
        assert!(parse_enum::<SecurityMode>("Encrypt", "x").is_err());
    }
}
