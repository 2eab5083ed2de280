//! Debian's mosquitto, started on a free loopback port with persistence in a temp dir so
//! that a restart keeps the sessions (as a production broker does).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for mosquitto");
        let mut m = Mosquitto { port: super::free_port(), dir, child: None };
        m.launch().await;
        m
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    async fn launch(&mut self) {
        let conf = format!(
            "listener {port} 127.0.0.1\nuser {user}\nallow_anonymous true\npersistence true\npersistence_location {dir}/\nautosave_interval 1\nlog_dest file {dir}/mosquitto.log\nmax_queued_messages 100000\n",
            port = self.port,
            // As root, mosquitto would switch to user `mosquitto`, which cannot write the
            // persistence file into our temp dir; stay the user we are.
            user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into()),
            dir = self.dir.path().display()
        );
        std::fs::write(self.conf_path(), conf).expect("write mosquitto.conf");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.conf_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto ({e}); install it: apt-get install -y mosquitto"));
        self.child = Some(child);
        super::wait_listening(super::loopback(self.port), Duration::from_secs(10)).await;
    }

    /// Stops the broker the way systemd would (SIGTERM); it saves its sessions.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same persistence file.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{name} {} failed", child.id());
}

/// Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH.
fn mosquitto_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("mosquitto")
    }
}
