//! No secret — a gateway key or the provider key — ever appears in logs, audit
//! entries, usage records, key listings or error bodies. Runs the real binaries with
//! debug logging, exercises keys and calls (good, wrong, revoked, the provider key sent
//! as a gateway key), then greps everything they wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const PROVIDER_KEY: &str = "sk-provider-9f8e7d6c5b4a39281706f5e4d3c2b1a0";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// Starts a long-running command and returns it with the address from its first line.
fn start(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    (child, addr)
}

fn cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = String::from_utf8(out.stdout).unwrap();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// One HTTP/1.1 request; returns the whole answer (head and body) as text.
fn http(addr: &str, path: &str, bearer: Option<&str>, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = bearer.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

fn secret_of(created: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(created.lines().next().unwrap()).unwrap();
    v["key"].as_str().unwrap().to_owned()
}

#[test]
fn no_secret_appears_in_logs_audit_records_or_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let (mut mock, mock_addr) = start(
        Command::new(bin())
            .args(["mock", "--listen", "127.0.0.1:0", "--api-key", PROVIDER_KEY])
            .stderr(Stdio::null()),
    );

    let first = secret_of(&cli(
        &data,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--json",
        ],
    ));
    let second = secret_of(&cli(
        &data,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "prod",
            "--json",
        ],
    ));

    // prod calls go through the environment's own provider credential.
    let prod_key_file = dir.join("prod-provider-key");
    std::fs::write(&prod_key_file, PROVIDER_KEY).unwrap();
    let prod_ref = format!("file:{}", prod_key_file.display());
    cli(
        &data,
        &[
            "projects",
            "set-credential",
            "shop",
            "--env",
            "prod",
            "--ref",
            &prod_ref,
        ],
    );

    let log_path = dir.join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut serve, addr) = start(
        Command::new(bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--upstream-api-key",
                "env:TG_TEST_PROVIDER_KEY",
            ])
            .arg("--upstream-url")
            .arg(format!("http://{mock_addr}/v1"))
            .arg("--data-dir")
            .arg(&data)
            .env("TG_TEST_PROVIDER_KEY", PROVIDER_KEY)
            .env("RUST_LOG", "debug")
            .stderr(Stdio::from(log)),
    );

    let mut answers = Vec::new();
    let call = r#"{"model":"gpt-4o-mini","input":"hello","max_output_tokens":32}"#;
    let stream = r#"{"model":"gpt-4o-mini","input":"hello","stream":true}"#;
    let chat =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    answers.push(http(&addr, "/v1/responses", Some(&first), call));
    answers.push(http(&addr, "/v1/responses", Some(&first), stream));
    answers.push(http(&addr, "/v1/chat/completions", Some(&second), chat));
    answers.push(http(
        &addr,
        "/v1/responses",
        Some(&format!("{first}x")),
        call,
    ));
    answers.push(http(&addr, "/v1/responses", Some(PROVIDER_KEY), call));
    answers.push(http(&addr, "/v1/responses", None, call));
    assert!(answers[0].starts_with("HTTP/1.1 200"), "{}", answers[0]);
    assert!(answers[2].starts_with("HTTP/1.1 200"), "{}", answers[2]);
    assert!(answers[3].starts_with("HTTP/1.1 401"), "{}", answers[3]);
    assert!(answers[4].starts_with("HTTP/1.1 401"), "{}", answers[4]);

    // Key changes while the server runs: rotation and revocation.
    let listed: serde_json::Value =
        serde_json::from_str(&cli(&data, &["keys", "list", "--json"])).unwrap();
    let ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    let rotated = secret_of(&cli(
        &data,
        &["keys", "rotate", &ids[0], "--grace", "0s", "--json"],
    ));
    cli(&data, &["keys", "revoke", &ids[1], "--reason", "test"]);
    answers.push(http(&addr, "/v1/responses", Some(&rotated), call));

    // Graceful stop.
    let pid = serve.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        serve.wait().unwrap().success(),
        "serve did not exit 0 on SIGTERM"
    );
    let _ = mock.kill();
    let _ = mock.wait();

    let mut haystacks = vec![
        ("server log", std::fs::read_to_string(&log_path).unwrap()),
        ("audit", cli(&data, &["audit", "--json"])),
        ("keys list", cli(&data, &["keys", "list", "--json"])),
        (
            "projects",
            cli(&data, &["projects", "show", "shop", "--json"]),
        ),
        ("usage", cli(&data, &["usage", "--by", "key", "--json"])),
        ("error and success bodies", answers.join("\n")),
    ];
    haystacks.push(("usage records", usage_records(&data)));
    assert!(
        haystacks[0].1.contains("tollgate serving"),
        "the log was captured"
    );
    assert!(haystacks[1].1.contains("key.rotate") || haystacks[1].1.contains("rotate"));
    assert!(haystacks[6].1.contains("req_"), "usage records were read");
    assert!(haystacks[3].1.contains(&prod_ref), "the reference is shown");
    for (what, text) in &haystacks {
        for secret in [
            first.as_str(),
            second.as_str(),
            rotated.as_str(),
            PROVIDER_KEY,
        ] {
            assert!(!text.contains(secret), "a secret appears in the {what}");
        }
        // Not even the random part on its own.
        for secret in [&first, &second, &rotated] {
            let random = &secret[secret.len() - 20..];
            assert!(
                !text.contains(random),
                "part of a secret appears in the {what}"
            );
        }
    }
}

/// Every usage record, as JSON text, read straight from the store.
fn usage_records(data: &Path) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = tollgate_store::Store::open_data_dir(data).await.unwrap();
        serde_json::to_string(&store.usage_records(0).await.unwrap()).unwrap()
    })
}

/// `--help` shows which environment variables a flag reads, never their values when
/// they may hold a password or key.
#[test]
fn help_never_shows_the_value_of_a_secret_environment_variable() {
    for args in [
        &["keys", "list", "--help"][..],
        &["serve", "--help"],
        &["mock", "--help"],
    ] {
        let out = Command::new(bin())
            .args(args)
            .env(
                "TOLLGATE_DATABASE_URL",
                "postgres://tg:hunter2@127.0.0.1:1/x",
            )
            .env("TOLLGATE_REDIS_URL", "redis://:hunter3@127.0.0.1:1")
            .env("TOLLGATE_MOCK_API_KEYS", "sk-hunter4")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("hunter"), "{args:?}: {text}");
    }
}

/// A start that fails (here: a provider key that cannot go in a header) prints no
/// `listening on` line first: a supervisor reading it would take the gateway as up.
#[test]
fn a_start_that_fails_announces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "sk-line-one\nsk-line-two\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream-api-key"])
        .arg(format!("file:{}", key_file.display()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("sk-line"), "{err}");
}
