//! The README's main command, `tollgate serve --demo`: it starts with no provider key
//! and no configuration, prints its address first and then a key, a curl command and a
//! Python snippet that work as printed; the key is stored nowhere but as its digest, and
//! a second start mints a new one and revokes the first; SIGINT stops it with exit 0
//! and the calls recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// Starts `serve --demo` in `data` after the shell commands `limits` (`ulimit …`, or
/// `true`); returns the child, the rest of its standard output and its address (the
/// first line).
fn spawn_demo(limits: &str, data: &Path) -> (Child, BufReader<ChildStdout>, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"{limits} && exec "$0" serve --demo --listen 127.0.0.1:0 --data-dir "$1""#
        ))
        .arg(bin())
        .arg(data)
        .env_remove("OPENAI_API_KEY")
        .env_remove("TOLLGATE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (out, addr) = listening(&mut child);
    (child, out, addr)
}

/// A started server's standard output, after its first line, and the address that
/// line announces (`listening on http://ADDR`).
fn listening(child: &mut Child) -> (BufReader<ChildStdout>, String) {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    (out, addr)
}

/// Starts `serve --demo` in `data`; returns the child, its address and the printed key.
fn start_demo(data: &Path) -> (Child, String, String) {
    let (child, mut out, addr) = spawn_demo("true", data);
    // The banner: read until the Python snippet, which closes it.
    let mut banner = String::new();
    while !banner.contains("print(r.output_text") {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "banner ended early: {banner}"
        );
        banner.push_str(&line);
    }
    let key = banner
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("tg-dev-").map(|rest| {
                format!(
                    "tg-dev-{}",
                    rest.trim_matches(|c: char| !c.is_ascii_alphanumeric())
                )
            })
        })
        .unwrap_or_else(|| panic!("no key in the banner: {banner}"));
    assert!(
        banner.contains(&format!("curl http://{addr}/v1/responses")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("base_url=\"http://{addr}/v1\"")),
        "{banner}"
    );
    // Keep reading what the server prints, so it never writes into a closed pipe (a
    // print to a closed stdout panics the server).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, addr, key)
}

/// The printed curl command's request; returns the whole answer.
fn call(addr: &str, key: &str) -> String {
    let body =
        r#"{"model": "gpt-4o-mini", "input": "Say hello in five words.", "max_output_tokens": 64}"#;
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

fn interrupt(mut child: Child) {
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        child.wait().unwrap().success(),
        "serve --demo did not exit 0"
    );
}

/// Whether any file under `dir` holds `needle`'s bytes.
fn stored_anywhere(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            return stored_anywhere(&path, needle);
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

#[test]
fn serve_demo_answers_the_printed_commands_and_mints_a_new_key_each_start() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, key) = start_demo(dir.path());
    let answer = call(&addr, &key);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"object\":\"response\""), "{answer}");
    interrupt(child);
    // The secret is kept nowhere in the data directory (the store has its digest).
    assert!(!stored_anywhere(dir.path(), &key));

    // A second start prints a new key and revokes the first; both calls were recorded.
    let (child, addr, again) = start_demo(dir.path());
    assert_ne!(again, key);
    assert!(call(&addr, &again).starts_with("HTTP/1.1 200"));
    let refused = call(&addr, &key);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    // A third start on the same port fails (the second holds it) and leaves the
    // running demo's key alone.
    let third = Command::new(bin())
        .args(["serve", "--demo", "--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!third.status.success());
    assert!(
        String::from_utf8_lossy(&third.stderr).contains("cannot listen"),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    let keys = support::json(dir.path(), &["keys", "list", "--json"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2, "the failed start minted no key: {keys:?}");
    let active: Vec<_> = keys
        .iter()
        .filter(|k| k["revoked_at_ms"].is_null())
        .collect();
    assert_eq!(active.len(), 1, "{keys:?}");
    assert!(again.starts_with(active[0]["prefix"].as_str().unwrap()));
    let still = call(&addr, &again);
    assert!(still.starts_with("HTTP/1.1 200"), "{still}");
    interrupt(child);
    let usage = Command::new(bin())
        .args(["usage", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(usage.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&usage.stdout).unwrap();
    let requests: u64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 4, "{rows}");
}

/// Starts `serve --demo` in `data` after the shell commands `limits` (`ulimit …`);
/// returns the child and its address, its output read and dropped meanwhile.
fn start_demo_under(limits: &str, data: &Path) -> (Child, String) {
    let (child, mut out, addr) = spawn_demo(limits, data);
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, addr)
}

/// `serve` started with a low soft limit on open files raises it to the hard limit, so
/// a busy gateway is not held to about a thousand connections.
#[cfg(target_os = "linux")]
#[test]
fn serve_raises_the_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = start_demo_under("ulimit -Sn 256", dir.path());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  SOFT  HARD  files"
    let (soft, hard) = (fields[3], fields[4]);
    let soft: u64 = soft.parse().unwrap();
    assert!(soft > 256, "{line}");
    match hard {
        "unlimited" => assert_eq!(soft, 1 << 20, "{line}"),
        hard => assert_eq!(soft, hard.parse::<u64>().unwrap(), "{line}"),
    }
}

/// `serve` under a hard limit on open files too low for its connection cap lowers the
/// cap to what fits.
#[cfg(unix)]
#[test]
fn serve_fits_its_connection_cap_to_a_low_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    // A hard limit of 1,024 cannot be raised: 10,000 connections (and their upstream
    // calls) would not fit, so the cap is lowered to what does.
    let (child, addr) = start_demo_under("ulimit -Sn 1024 && ulimit -Hn 1024", dir.path());
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    interrupt(child);
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .trim()
            .to_owned()
    };
    // (1,024 - 256 kept aside) / 2.
    assert_eq!(sample("tollgate_connections_max"), "384");
    assert_eq!(sample("tollgate_connections_open"), "1", "the scrape's own");
}

/// A graceful shutdown that cannot finish (a call waits on an upstream that never
/// answers) is stopped at once by a second signal, with exit status 130.
#[test]
fn a_second_signal_stops_a_shutdown_that_cannot_finish() {
    use std::sync::mpsc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let created = support::json(
        dir.path(),
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--json",
        ],
    );
    let key = created["key"].as_str().unwrap().to_owned();
    // An upstream that takes connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = silent.local_addr().unwrap();
    let (took, called) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
            let _ = took.send(());
        }
    });
    let mut serve = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--upstream-url")
        .arg(format!("http://{upstream}/v1"))
        .env("OPENAI_API_KEY", "sk-test-provider")
        .env("RUST_LOG", "info")
        .env_remove("TOLLGATE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, addr) = listening(&mut serve);
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let (said, log) = mpsc::channel();
    let err = BufReader::new(serve.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    // A call that waits on the upstream for as long as the grace lasts.
    std::thread::spawn(move || call(&addr, &key));
    called
        .recv_timeout(Duration::from_secs(10))
        .expect("the call reached the upstream");
    let signal = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    signal(serve.id());
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(10))
            .expect("no word of the graceful shutdown");
        if line.contains("shutting down gracefully") {
            break;
        }
    }
    signal(serve.id());
    let status = serve.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
}
