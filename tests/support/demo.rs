//! `edge-agent demo` as a separate process on free loopback ports, killed when dropped
//! (passed or not). Its console and log go to `console.txt` and `demo.log` in `dir`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command};

pub struct Demo {
    child: Child,
    /// The status page's port.
    pub web: u16,
    /// The embedded broker's port.
    pub mqtt: u16,
}

impl Demo {
    /// Starts the demo with its page on `web_host` (`127.0.0.1`, or `0.0.0.0` to bind every
    /// interface), its outbox in `dir/data`, and `extra` arguments.
    pub fn start(dir: &Path, web_host: &str, extra: &[&OsStr]) -> Demo {
        let (web, mqtt, modbus) = (super::free_port(), super::free_port(), super::free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .arg("demo")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--web-listen", &format!("{web_host}:{web}"), "--mqtt-port", &mqtt.to_string(), "--modbus-port", &modbus.to_string()])
            .args(extra)
            .stdout(std::fs::File::create(dir.join("console.txt")).expect("console.txt"))
            .stderr(std::fs::File::create(dir.join("demo.log")).expect("demo.log"))
            .spawn()
            .expect("start edge-agent demo");
        Demo { child, web, mqtt }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
