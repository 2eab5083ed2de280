//! The Debian package (packaging/build-deb), built from this test build's binary for the
//! host's architecture: its contents and control fields, its maintainer scripts, and an
//! install, remove and purge in a scratch root (`dpkg --root` with the scripts run
//! chrootless under fakeroot, as a bootstrap tool does), where the installed binary checks
//! the installed default config. Nothing touches the machine's own dpkg database or systemd.
//! The ARM packages are the same script fed with cross/build's binaries (.ci/run).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn tool(name: &str) -> Command {
    let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.exists());
    let path = found.unwrap_or_else(|| panic!("{name} is missing: scripts/setup-dev installs it"));
    Command::new(path)
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host_arch() -> String {
    ok(tool("dpkg").arg("--print-architecture").output().expect("run dpkg"), "dpkg --print-architecture").trim().to_string()
}

fn workspace_version() -> String {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap().parse().unwrap();
    manifest["workspace"]["package"]["version"].as_str().unwrap().to_string()
}

/// The package, built once for all the tests of this file (uncompressed: the debug binary
/// is 60 MB and xz would take minutes on a loaded machine).
fn package() -> &'static Path {
    static DEB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DEB.get_or_init(|| {
        let out = tempfile::tempdir().unwrap();
        let built = Command::new(repo().join("packaging/build-deb"))
            .arg(host_arch())
            .arg(env!("CARGO_BIN_EXE_edge-agent"))
            .arg(out.path())
            .env("DEB_COMPRESS", "none")
            .output()
            .expect("run packaging/build-deb");
        let path = PathBuf::from(ok(built, "packaging/build-deb").trim());
        (out, path)
    })
    .1
}

/// One line of `dpkg-deb --contents`: mode, owner and path.
struct Entry {
    mode: String,
    owner: String,
    path: String,
}

fn contents() -> Vec<Entry> {
    let listing = ok(tool("dpkg-deb").arg("--contents").arg(package()).output().unwrap(), "dpkg-deb --contents");
    listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Entry { mode: f[0].to_string(), owner: f[1].to_string(), path: f[5].trim_start_matches('.').trim_end_matches('/').to_string() }
        })
        .collect()
}

fn field(name: &str) -> String {
    ok(tool("dpkg-deb").arg("--field").arg(package()).arg(name).output().unwrap(), "dpkg-deb --field").trim().to_string()
}

#[test]
fn the_package_ships_the_binary_the_unit_the_user_the_config_the_store_and_the_manual_owned_by_root() {
    // Given the package built from this build's binary
    let entries = contents();
    let mode_of = |path: &str| {
        entries.iter().find(|e| e.path == path).map(|e| e.mode.clone()).unwrap_or_else(|| panic!("{path} is not in the package"))
    };
    // Then every file a gateway needs is there, with its mode
    for (path, mode) in [
        ("/usr/bin/edge-agent", "-rwxr-xr-x"),
        ("/usr/lib/systemd/system/edge-agent.service", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/edge-agent.conf", "-rw-r--r--"),
        ("/etc/edge-agent/edge-agent.toml", "-rw-r--r--"),
        ("/var/lib/edge-agent", "drwx------"),
        ("/usr/share/man/man1/edge-agent.1.gz", "-rw-r--r--"),
        ("/usr/share/doc/edge-agent/copyright", "-rw-r--r--"),
        ("/usr/share/doc/edge-agent/install.md", "-rw-r--r--"),
        ("/usr/share/doc/edge-agent/README.md", "-rw-r--r--"),
        ("/usr/share/doc/edge-agent/examples/sugar-mill.toml", "-rw-r--r--"),
    ] {
        assert_eq!(mode_of(path), mode, "{path}");
    }
    // and everything is root's (the postinst hands the store and the config to the agent)
    for e in &entries {
        assert_eq!(e.owner, "root/root", "{}", e.path);
    }
    // and the shipped files are the repository's
    let installed: Vec<&str> = entries.iter().filter(|e| e.mode.starts_with('-')).map(|e| e.path.as_str()).collect();
    assert_eq!(installed.len(), 9, "unexpected files: {installed:?}");
}

#[test]
fn the_control_fields_name_the_version_the_architecture_and_the_runtime_dependencies() {
    // Given the package
    // Then its control fields are the workspace's version and the host's architecture
    assert_eq!(field("Package"), "edge-agent");
    assert_eq!(field("Version"), workspace_version());
    assert_eq!(field("Architecture"), host_arch());
    // and it depends on glibc (at the newest symbol version the binary uses), libgcc and a
    // sysusers implementation for the postinst
    let depends = field("Depends");
    let glibc =
        depends.split("libc6 (>= ").nth(1).and_then(|r| r.split(')').next()).unwrap_or_else(|| panic!("no libc6 version in {depends}"));
    let (major, minor) = glibc.split_once('.').unwrap_or_else(|| panic!("glibc version {glibc}"));
    assert_eq!(major, "2");
    assert!(minor.parse::<u32>().unwrap() >= 17, "{depends}");
    assert!(depends.contains("libgcc-s1"), "{depends}");
    assert!(depends.contains("systemd | systemd-standalone-sysusers | systemd-sysusers"), "{depends}");
    assert!(field("Description").starts_with("Industrial edge agent"));
    // and the config is its one conffile, so an upgrade never overwrites an engineer's edits
    let dir = tempfile::tempdir().unwrap();
    ok(tool("dpkg-deb").arg("--control").arg(package()).arg(dir.path()).output().unwrap(), "dpkg-deb --control");
    assert_eq!(std::fs::read_to_string(dir.path().join("conffiles")).unwrap(), "/etc/edge-agent/edge-agent.toml\n");
    for script in ["postinst", "prerm", "postrm"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join(script)).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "{script}");
    }
}

#[test]
fn the_unit_runs_the_installed_binary_with_the_installed_config() {
    // Given the unit as shipped
    let unit = std::fs::read_to_string(repo().join("systemd/edge-agent.service")).unwrap();
    // Then it starts /usr/bin/edge-agent with the package's conffile
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart=");
    assert_eq!(exec, "/usr/bin/edge-agent run --config /etc/edge-agent/edge-agent.toml");
}

#[test]
fn the_maintainer_scripts_and_the_build_scripts_pass_sh_n_and_shellcheck() {
    // Given the maintainer scripts (POSIX sh) and the scripts that build the packages (bash)
    let scripts = ["packaging/debian/postinst", "packaging/debian/prerm", "packaging/debian/postrm"];
    for s in scripts {
        // Then each parses as POSIX sh
        ok(tool("sh").arg("-n").arg(repo().join(s)).output().unwrap(), &format!("sh -n {s}"));
    }
    // and shellcheck finds nothing in them, nor in the build scripts
    let mut check = tool("shellcheck");
    check.current_dir(repo()).args(scripts).args(["packaging/build-deb", "cross/build"]);
    ok(check.output().expect("run shellcheck"), "shellcheck");
}

/// A scratch root with an empty dpkg database, and dpkg run on it under fakeroot with the
/// maintainer scripts run outside a chroot (they honour DPKG_ROOT). The fakeroot state
/// file keeps the owners between calls.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("var/lib/dpkg/status"), "").unwrap();
        std::fs::write(dir.path().join(".fakeroot"), "").unwrap();
        Scratch { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    /// `fakeroot` with the saved state, running `args`.
    fn fakeroot(&self, args: &[&str]) -> Output {
        let state = self.dir.path().join(".fakeroot");
        tool("fakeroot").arg("-i").arg(&state).arg("-s").arg(&state).arg("--").args(args).output().expect("run fakeroot")
    }

    fn dpkg(&self, args: &[&str]) -> String {
        let root = format!("--root={}", self.dir.path().display());
        let mut all = vec![
            "dpkg",
            root.as_str(),
            "--force-script-chrootless",
            "--force-not-root",
            // An empty root has no libc6 and no ldconfig: only the package itself is tested.
            "--force-depends",
            "--force-bad-path",
            "--log=/dev/null",
        ];
        all.extend_from_slice(args);
        ok(self.fakeroot(&all), &format!("dpkg {args:?}"))
    }

    /// Owner uid, gid and permission bits, as fakeroot recorded them.
    fn stat(&self, p: &str) -> (u32, u32, u32) {
        let out = ok(self.fakeroot(&["stat", "-c", "%u %g %a", self.path(p).to_str().unwrap()]), "stat");
        let f: Vec<&str> = out.split_whitespace().collect();
        // the ids are decimal, %a is octal
        (f[0].parse().unwrap(), f[1].parse().unwrap(), u32::from_str_radix(f[2], 8).unwrap())
    }

    /// The numeric id of `name` in the scratch root's passwd or group file.
    fn id(&self, file: &str, name: &str) -> u32 {
        let text = std::fs::read_to_string(self.path(&format!("etc/{file}"))).unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("no {name} in {file}:\n{text}"));
        line.split(':').nth(2).unwrap().parse().unwrap()
    }
}

#[test]
fn installing_into_a_scratch_root_creates_the_user_hands_it_the_store_and_the_config_and_enables_the_service() {
    // Given an empty root
    let scratch = Scratch::new();
    // When the package is installed there
    scratch.dpkg(&["--install", package().to_str().unwrap()]);
    // Then the system user exists, in the serial and gpio groups
    let uid = scratch.id("passwd", "edge-agent");
    let gid = scratch.id("group", "edge-agent");
    assert!(uid < 1000, "uid {uid}");
    let group = std::fs::read_to_string(scratch.path("etc/group")).unwrap();
    for g in ["dialout", "gpio"] {
        assert!(group.lines().any(|l| l.starts_with(&format!("{g}:")) && l.ends_with("edge-agent")), "{group}");
    }
    // and the store is the agent's alone
    assert_eq!(scratch.stat("var/lib/edge-agent"), (uid, gid, 0o700));
    // and the config is readable by the agent's group, not by others (it may hold a password)
    assert_eq!(scratch.stat("etc/edge-agent"), (0, gid, 0o750));
    assert_eq!(scratch.stat("etc/edge-agent/edge-agent.toml"), (0, gid, 0o640));
    // and the service is enabled for boot (multi-user.target wants it)
    let wants = scratch.path("etc/systemd/system/multi-user.target.wants/edge-agent.service");
    assert_eq!(std::fs::read_link(&wants).unwrap(), Path::new("/usr/lib/systemd/system/edge-agent.service"));
    // and dpkg knows the package as installed
    let status = std::fs::read_to_string(scratch.path("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: edge-agent\nStatus: install ok installed"), "{status}");
}

#[test]
fn the_installed_binary_accepts_the_installed_default_config_which_keeps_the_store_in_var_lib_and_the_page_on_loopback() {
    // Given the package installed into a scratch root
    let scratch = Scratch::new();
    scratch.dpkg(&["--install", package().to_str().unwrap()]);
    let binary = scratch.path("usr/bin/edge-agent");
    let config = scratch.path("etc/edge-agent/edge-agent.toml");
    // When the installed binary checks the installed config
    let out = ok(Command::new(&binary).arg("check-config").arg(&config).output().expect("run the installed binary"), "check-config");
    // Then it is valid (and reads no devices until the engineer adds them)
    assert!(out.contains(": ok (0 devices, 0 tags)"), "{out}");
    // and it keeps the store where the service's StateDirectory= is, and the page on loopback
    let parsed = edge_agent::config::load_file(&config).expect("the default config is valid");
    assert_eq!(parsed.gateway.data_dir, Path::new("/var/lib/edge-agent"));
    let web: std::net::SocketAddr = parsed.web.listen.parse().expect("web.listen is an address");
    assert!(web.ip().is_loopback(), "{web}");
}

#[test]
fn remove_keeps_the_config_and_the_store_and_purge_deletes_them_and_the_enablement() {
    // Given the package installed into a scratch root, with data in the store and an edited config
    let scratch = Scratch::new();
    scratch.dpkg(&["--install", package().to_str().unwrap()]);
    std::fs::write(scratch.path("var/lib/edge-agent/outbox.db"), b"samples").unwrap();
    let config = scratch.path("etc/edge-agent/edge-agent.toml");
    let edited = std::fs::read_to_string(&config).unwrap().replace("gateway-01", "press-line-7");
    std::fs::write(&config, &edited).unwrap();
    // When it is removed
    scratch.dpkg(&["--remove", "edge-agent"]);
    // Then the binary and the unit are gone
    assert!(!scratch.path("usr/bin/edge-agent").exists());
    assert!(!scratch.path("usr/lib/systemd/system/edge-agent.service").exists());
    // but the store and the edited config are kept
    assert_eq!(std::fs::read(scratch.path("var/lib/edge-agent/outbox.db")).unwrap(), b"samples");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    // When it is purged
    scratch.dpkg(&["--purge", "edge-agent"]);
    // Then the store, the config and the boot symlink are gone
    assert!(!scratch.path("var/lib/edge-agent").exists());
    assert!(!scratch.path("etc/edge-agent").exists());
    assert!(std::fs::symlink_metadata(scratch.path("etc/systemd/system/multi-user.target.wants/edge-agent.service")).is_err());
}

#[test]
fn the_manual_page_describes_every_subcommand() {
    // Given the subcommands in `edge-agent --help`
    let help = ok(Command::new(env!("CARGO_BIN_EXE_edge-agent")).arg("--help").output().unwrap(), "--help");
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(commands.contains(&"run") && commands.contains(&"check-config"), "{help}");
    // Then the man page has each of them in bold
    let page = std::fs::read_to_string(repo().join("packaging/edge-agent.1")).unwrap();
    for c in commands {
        let described = page.lines().any(|l| {
            l == format!(".B {c}")
                || l == format!(".BR {c} ,")
                || l.starts_with(&format!(".BI \"{c} "))
                || l.starts_with(&format!(".BR {c} "))
        });
        assert!(described, "the man page does not describe `{c}`");
    }
}
