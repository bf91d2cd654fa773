//! `punchline-demo`: the project in one command. A rendezvous server and two peers
//! that pair, punch a direct TCP connection and pipe data both ways, end-to-end
//! encrypted, with every step printed.
//!
//! As root it runs them in the NAT lab (the `lab` crate): the server on a simulated
//! internet, each peer behind its own port-restricted NAT, 50 ms between the sites, and
//! it proves the link was direct with the server namespace's nftables byte counters.
//! Without root it runs the same programs on loopback, where there is no NAT to punch.
//!
//! Run through `bash demos/run.sh`, which builds the binaries first; `--loopback`
//! skips the lab.

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{Host, Lab, LabSpec};
use sha2::{Digest, Sha256};

const DATA_LEN: usize = 20_000_000;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

/// Where the programs run: in the lab's namespaces, or all on this host.
enum World {
    Lab(Box<Lab>),
    Loopback,
}

impl World {
    fn command(&self, host: Host, name: &str) -> Result<Command> {
        let path = lab::find_binary(name)?;
        Ok(match self {
            World::Lab(lab) => lab.command(host, path),
            World::Loopback => Command::new(path),
        })
    }

    fn server_bytes(&self) -> Option<u64> {
        match self {
            World::Lab(lab) => lab.server_tcp_bytes().ok(),
            World::Loopback => None,
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run() -> Result<()> {
    let forced = std::env::args().any(|a| a == "--loopback");
    let available = if forced {
        Err("--loopback given".to_string())
    } else {
        lab::lab_available()
    };
    let world = match available {
        Ok(()) => {
            println!("== building the NAT lab: server on 203.0.113.10, host A behind NAT A (203.0.113.21),");
            println!(
                "   host B behind NAT B (203.0.113.22); both NATs port-restricted cone, answering"
            );
            println!("   unsolicited SYNs with RST; 10 ms + 15 ms one way to the internet (A-B RTT 50 ms)");
            World::Lab(Box::new(
                Lab::new(LabSpec::default()).context("building the lab")?,
            ))
        }
        Err(reason) => {
            println!(
                "== NAT lab unavailable ({reason}): running on loopback, where there is no NAT"
            );
            World::Loopback
        }
    };
    let bind = match &world {
        World::Lab(lab) => lab.server_ip().to_string(),
        World::Loopback => "127.0.0.1".to_string(),
    };

    let mut server = world.command(Host::Server, "rendezvous")?;
    server
        .args(["--bind", &bind, "--port", "0", "--token", "demo-token"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = Killed(server.spawn().context("starting rendezvous")?);
    let mut first = String::new();
    BufReader::new(server.0.stdout.take().context("stdout")?).read_line(&mut first)?;
    let addr = first
        .split_whitespace()
        .nth(2)
        .context("no 'listening on' line")?
        .to_string();
    println!("== rendezvous listening on {addr}");
    let server_log = follow(server.0.stderr.take().context("stderr")?);

    let payload: Vec<u8> = {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..DATA_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let answer = b"hello from B, the data arrived\n".to_vec();
    let before = world.server_bytes();
    let started = Instant::now();
    println!("== peer A: pipe --code demo, sending {DATA_LEN} bytes; peer B: pipe --code demo, answering");
    let a = spawn_peer(&world, Host::A, &addr, payload.clone())?;
    let b = spawn_peer(&world, Host::B, &addr, answer.clone())?;
    let (a_out, a_err, a_ok) = a.finish()?;
    let (b_out, b_err, b_ok) = b.finish()?;
    let elapsed = started.elapsed();
    for (name, err) in [("A", &a_err), ("B", &b_err)] {
        for line in err.lines() {
            println!("   peer {name} | {line}");
        }
    }
    drop(server);
    for line in server_log
        .try_iter()
        .filter(|l| l.contains("signalling") || l.contains("link direct"))
    {
        println!("   server  | {}", strip_timestamp(&line));
    }
    if !(a_ok && b_ok) {
        bail!("a peer failed (see above)");
    }
    let sent = hex(&Sha256::digest(&payload));
    let got = hex(&Sha256::digest(&b_out));
    println!(
        "== A -> B: {} bytes, sha256 sent {}.., received {}.. {}",
        b_out.len(),
        &sent[..16],
        &got[..16],
        verdict(sent == got)
    );
    println!(
        "== B -> A: {:?} {}",
        String::from_utf8_lossy(&a_out).trim_end(),
        verdict(a_out == answer)
    );
    if let (Some(before), Some(after)) = (before, world.server_bytes()) {
        let seen = after - before;
        println!(
            "== the server's namespace carried {seen} bytes of TCP during the run ({:.3}% of the data): {}",
            seen as f64 * 100.0 / DATA_LEN as f64,
            if seen < 64 * 1024 { "the link was direct" } else { "NOT direct" }
        );
    }
    println!("== done in {:.2} s", elapsed.as_secs_f64());
    if sent != got || a_out != answer {
        bail!("data differs");
    }
    Ok(())
}

struct PeerRun {
    child: Killed,
    out: std::thread::JoinHandle<Vec<u8>>,
    err: std::thread::JoinHandle<String>,
}

impl PeerRun {
    fn finish(mut self) -> Result<(Vec<u8>, String, bool)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(st) = self.child.0.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                bail!("a peer did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.out.join().unwrap_or_default();
        let err = self.err.join().unwrap_or_default();
        Ok((out, err, status.success()))
    }
}

fn spawn_peer(world: &World, host: Host, addr: &str, input: Vec<u8>) -> Result<PeerRun> {
    let mut cmd = world.command(host, "peer")?;
    cmd.args([
        "--server",
        addr,
        "--token",
        "demo-token",
        "pipe",
        "--code",
        "demo",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting peer")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().context("stdout")?;
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let mut stderr = child.stderr.take().context("stderr")?;
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Ok(PeerRun {
        child: Killed(child),
        out,
        err,
    })
}

fn follow(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn strip_timestamp(line: &str) -> &str {
    line.split_once("rendezvous::server: ")
        .map(|(_, rest)| rest)
        .unwrap_or(line)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "MISMATCH"
    }
}
