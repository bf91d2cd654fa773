//! Installing: `dist/install.sh` puts working binaries where it says, the systemd
//! units' command lines work as written (run here with their paths pointed at the
//! build), and release binaries stay under 12 MB.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::*;

const T: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("punchline-install-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `KEY=` lines of a unit file.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("dist/systemd").join(unit)).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// A unit's ExecStart as a command, with /usr/local/bin/ pointed at the build and
/// `%i` replaced by `instance`, and /etc/punchline/ by `etc`.
fn exec_start(unit: &str, instance: &str, etc: &Path) -> Command {
    let line = unit_values(unit, "ExecStart").pop().expect("ExecStart");
    let bin_dir = bin("peer").parent().unwrap().to_path_buf();
    let line = line
        .replace("/usr/local/bin/", &format!("{}/", bin_dir.display()))
        .replace("/etc/punchline/", &format!("{}/", etc.display()))
        .replace("%i", instance);
    let mut words = line.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap());
    cmd.args(words);
    for env in unit_values(unit, "Environment") {
        let (k, v) = env.split_once('=').unwrap();
        let v = v
            .replace("/var/lib/punchline-peer/", &format!("{}/", etc.display()))
            .replace("%i", instance);
        cmd.env(k, v);
    }
    cmd.env_remove("PUNCHLINE_TOKEN")
        .env_remove("PUNCHLINE_SERVER");
    cmd
}

#[test]
fn install_script_puts_working_binaries_in_prefix_bin() {
    let prefix = scratch("prefix");
    let from = bin("peer").parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg(repo().join("dist/install.sh"))
        .args(["--prefix", prefix.to_str().unwrap(), "--from"])
        .arg(&from)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for b in ["peer", "rendezvous"] {
        let path = prefix.join("bin").join(b);
        assert!(
            text.contains(&format!("installed {}", path.display())),
            "{text}"
        );
        let v = Command::new(&path).arg("--version").output().unwrap();
        assert!(v.status.success());
        assert!(String::from_utf8_lossy(&v.stdout).starts_with(&format!("{b} ")));
    }
    assert!(text.contains("is not on PATH"), "{text}");
    let bad = Command::new("bash")
        .arg(repo().join("dist/install.sh"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&prefix);
}

/// The server unit's and the peer unit's command lines, run as systemd would run them
/// (paths aside): the server listens, the peer exposes its config's proxy.
#[test]
fn systemd_units_run_as_written() {
    let etc = scratch("etc");
    std::fs::write(
        etc.join("rendezvous.toml"),
        "bindAddr = \"127.0.0.1\"\nbindPort = 0\n",
    )
    .unwrap();
    let srv = exec_start("punchline-rendezvous.service", "", &etc);
    let (_srv, addr) = rendezvous(srv, &[]);
    assert!(unit_values("punchline-rendezvous.service", "LimitNOFILE")
        .iter()
        .any(|v| v == "1048576"));

    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        etc.join("office.toml"),
        format!(
            "serverAddr = \"127.0.0.1\"\nserverPort = {}\n\n[[proxies]]\nname = \"ssh\"\n\
             type = \"tcp\"\nlocalPort = {}\nremotePort = 0\n",
            addr.port(),
            backend.local_addr().unwrap().port()
        ),
    )
    .unwrap();
    let peer = exec_start("punchline-peer@.service", "office", &etc);
    let p = Proc::spawn("peer@office", peer);
    let line = p.stdout.wait_for("exposed ssh tcp", T);
    assert!(line.starts_with("exposed ssh tcp "), "{line}");
    // The identity went where the unit says (the state directory), named after the
    // instance.
    assert!(etc.join("office.identity").is_file());
    let _ = std::fs::remove_dir_all(&etc);
}

/// Release binaries are small enough to copy around (no debug info; the `profiling`
/// profile has it). Checked when the tests run in release, as CI does. The peer was
/// 8.2 MB before its UPnP client (igd-next: an HTTP client, URL and XML parsers) made
/// it 13.2 MB; the limit is 16 MB so that the next such growth is a decision.
#[test]
fn release_binaries_are_under_16_mb() {
    let peer = bin("peer");
    if !peer.parent().unwrap().ends_with("release") {
        println!("skipped: not a release build ({})", peer.display());
        return;
    }
    for b in ["peer", "rendezvous"] {
        let size = std::fs::metadata(bin(b)).unwrap().len();
        println!("INSTALL release {b}: {:.1} MB", size as f64 / 1e6);
        assert!(size < 16_000_000, "{b} is {size} bytes");
    }
}
