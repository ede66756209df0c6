//! Secret references (`env:NAME`, `file:/path`, `exec:command`) and the [`Secret`]
//! value they resolve to. A provider key is never a literal in configuration, and a
//! resolved secret never appears in `Debug`, `Display`, logs or errors.

use std::fmt;
use std::process::Command;

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file whose contents (trimmed) are the secret.
    File(String),
    /// A command (run with `sh -c`) whose standard output (trimmed) is the secret.
    Exec(String),
}

/// A resolved secret. Its value is reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Why a reference could not be parsed or resolved. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("not a secret reference: use env:NAME, file:/path or exec:command (literal secrets are not accepted)")]
    NotAReference,
    #[error("secret reference {0} is empty")]
    Empty(String),
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// Not echoed: text given where a variable's name belongs may be the secret.
    #[error("env: takes the name of an environment variable (letters, digits and _, such as env:OPENAI_API_KEY), not a value")]
    EnvName,
    /// Not echoed: a provider key pasted where a path or a command belongs.
    #[error("file: and exec: take a path or a command, not the key itself (use env:NAME, file:/path or exec:command)")]
    PastedKey,
    #[error("cannot read secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("secret command failed: {0}")]
    Exec(String),
}

impl SecretRef {
    /// Parses `env:NAME`, `file:/path` or `exec:command`.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let (scheme, rest) = s.split_once(':').ok_or(SecretError::NotAReference)?;
        let rest = rest.trim();
        let make = match scheme {
            "env" => Self::Env,
            "file" => Self::File,
            "exec" => Self::Exec,
            _ => return Err(SecretError::NotAReference),
        };
        if rest.is_empty() {
            return Err(SecretError::Empty(format!("{scheme}:")));
        }
        if scheme != "env" && tollgate_store::is_pasted_key(rest) {
            return Err(SecretError::PastedKey);
        }
        if scheme == "env" && !tollgate_store::is_env_var_name(rest) {
            return Err(SecretError::EnvName);
        }
        Ok(make(rest.to_owned()))
    }

    /// Reads the secret now.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            Self::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))?
            }
            Self::File(path) => read_secret_file(path)?,
            Self::Exec(cmd) => run(cmd)?,
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret(value))
    }
}

/// The most a secret file may hold: a key is a few hundred bytes.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a regular file of at most [`MAX_SECRET_FILE_BYTES`]. Anything else (a FIFO
/// that no one writes, a device) is refused before it is opened, so a reference
/// cannot hang the thread that reads it.
fn read_secret_file(path: &str) -> Result<String, SecretError> {
    use std::io::Read as _;
    let fail = |reason: String| SecretError::File {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.kind().to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_SECRET_FILE_BYTES} bytes")));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(e.kind().to_string()))?;
    let mut text = String::new();
    file.take(MAX_SECRET_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.kind().to_string()))?;
    Ok(text)
}

/// How long an `exec:` command may take: one that hangs (a vault CLI waiting on the
/// network) must not hold up the start or a reload of the keys for ever.
pub const EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn run(cmd: &str) -> Result<String, SecretError> {
    run_within(cmd, EXEC_TIMEOUT)
}

/// Runs `cmd` with `sh -c` in a process group of its own; past `limit` the whole group
/// is killed (the shell and whatever it started).
fn run_within(cmd: &str, limit: std::time::Duration) -> Result<String, SecretError> {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // stderr may echo the secret: it is not read.
        .stderr(Stdio::null());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .map_err(|e| SecretError::Exec(e.kind().to_string()))?;
    let mut stdout = child.stdout.take();
    // Read on a thread of its own, so a command that writes a lot cannot block on a
    // full pipe while it is waited for.
    let (send, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut out);
        }
        let _ = send.send(out);
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(None) => {
                kill_group(&mut child);
                return Err(SecretError::Exec(format!(
                    "did not finish within {} s",
                    limit.as_secs()
                )));
            }
            Err(e) => return Err(SecretError::Exec(e.kind().to_string())),
        }
    };
    if !status.success() {
        kill_group(&mut child);
        // Only the status is reported: the output may hold the secret.
        return Err(SecretError::Exec(format!("exited with {status}")));
    }
    // The output ends when every process holding the pipe has closed it: a command
    // that left one running in the background (`sleep 1000 & echo sk-…`) would hold
    // it open. Past the deadline, the group is killed, which closes it.
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let out = match done.recv_timeout(left) {
        Ok(out) => out,
        Err(_) => {
            kill_group(&mut child);
            // A process that left the group (a daemon) may hold it still: not waited for.
            done.recv_timeout(std::time::Duration::from_secs(1))
                .map_err(|_| SecretError::Exec("its output was not closed".into()))?
        }
    };
    String::from_utf8(out).map_err(|_| SecretError::Exec("output is not UTF-8".into()))
}

/// Kills the command's process group (unix), else the command.
fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        let group = format!("-{}", child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A stored reference as logs may show it: an `exec:` command's program only (its
/// arguments may hold a token), and nothing of text that is not a reference.
pub fn describe(reference: &str) -> String {
    SecretRef::parse(reference).map_or_else(|_| "(not a reference)".to_owned(), |r| r.to_string())
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => write!(f, "env:{n}"),
            Self::File(p) => write!(f, "file:{p}"),
            // The command line itself may embed credentials: show only its program
            // (not a leading `NAME=value` assignment, which may be a token).
            Self::Exec(c) => f.write_str(&tollgate_store::shown_secret_ref(&format!("exec:{c}"))),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

impl Secret {
    /// Wraps a value produced inside the process (e.g. the demo upstream's key).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_schemes_and_refuses_literals() {
        assert_eq!(
            SecretRef::parse("env:OPENAI_API_KEY"),
            Ok(SecretRef::Env("OPENAI_API_KEY".into()))
        );
        assert_eq!(
            SecretRef::parse("file:/run/key"),
            Ok(SecretRef::File("/run/key".into()))
        );
        assert_eq!(
            SecretRef::parse("exec:pass show openai"),
            Ok(SecretRef::Exec("pass show openai".into()))
        );
        assert_eq!(
            SecretRef::parse("sk-literal-key"),
            Err(SecretError::NotAReference)
        );
        assert_eq!(SecretRef::parse("vault:x"), Err(SecretError::NotAReference));
        assert!(matches!(
            SecretRef::parse("env:"),
            Err(SecretError::Empty(_))
        ));
        // A value pasted where a variable's name belongs is refused, not echoed.
        let e = SecretRef::parse("env:sk-proj-abc123").unwrap_err();
        assert_eq!(e, SecretError::EnvName);
        assert!(!e.to_string().contains("abc123"), "{e}");
        assert!(SecretRef::parse("env:1ABC").is_err());
        // Nor is a key pasted after file: or exec:.
        for pasted in ["file:sk-proj-abc123", "exec: sk-proj-abc123"] {
            let e = SecretRef::parse(pasted).unwrap_err();
            assert_eq!(e, SecretError::PastedKey);
            assert!(!e.to_string().contains("abc123"), "{e}");
            assert!(tollgate_store::validate_secret_ref(pasted).is_err());
        }
    }

    #[test]
    fn a_secret_file_must_be_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        // A FIFO no one writes would block the reading thread for ever.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = SecretRef::File(fifo.display().to_string())
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = SecretRef::File(dir.path().display().to_string())
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 70_000]).unwrap();
        let e = SecretRef::File(big.display().to_string())
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn resolves_file_and_exec_and_never_prints_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-test-123\n").unwrap();
        let s = SecretRef::File(path.display().to_string())
            .resolve()
            .unwrap();
        assert_eq!(s.expose(), "sk-test-123");
        assert!(!format!("{s:?} {s}").contains("sk-test"));

        let s = SecretRef::parse("exec:printf sk-exec-456")
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(s.expose(), "sk-exec-456");
        let r = SecretRef::parse("exec:echo sk-exec-456; exit 3").unwrap();
        let err = r.resolve().unwrap_err().to_string();
        assert!(!err.contains("sk-exec"), "{err}");
        assert!(!format!("{r}").contains("sk-exec"));

        assert!(matches!(
            SecretRef::Env("TOLLGATE_TEST_SURELY_UNSET_VAR".into()).resolve(),
            Err(SecretError::EnvMissing(_))
        ));
    }

    #[test]
    fn logs_describe_a_command_by_its_program_only() {
        let described = describe("exec:vault read -field=key -header X-Vault-Token:hvs.SECRET");
        assert_eq!(described, "exec:vault …");
        // A leading assignment may be a token: the program after it is shown.
        let described = describe("exec:VAULT_TOKEN=hvs.SECRET vault read x");
        assert_eq!(described, "exec:vault …");
        assert_eq!(describe("file:/run/key"), "file:/run/key");
        assert_eq!(describe("sk-pasted"), "(not a reference)");
    }

    #[test]
    fn a_command_that_hangs_is_stopped_at_its_limit_with_what_it_started() {
        // The shell starts a child that would outlive it, holding the output open.
        let started = std::time::Instant::now();
        let err = run_within(
            "sleep 31.4159; echo sk-late",
            std::time::Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(err.to_string().contains("did not finish within"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // The group was killed: no `sleep 31.4159` is left running (a killed process
        // may take a moment to go).
        #[cfg(target_os = "linux")]
        {
            let running = || {
                std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
                    let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                    cmdline.starts_with(b"sleep\x0031.4159")
                })
            };
            let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while running() && std::time::Instant::now() < until {
                std::thread::yield_now();
            }
            assert!(!running(), "the command's child was left running");
        }
    }

    #[test]
    fn a_command_that_leaves_a_child_holding_its_output_is_stopped_at_its_limit() {
        // The shell prints and exits at once; its background child keeps the output
        // open, so reading it to its end would wait for the child.
        let started = std::time::Instant::now();
        let out = run_within(
            "sleep 27.1828 & printf sk-bg",
            std::time::Duration::from_millis(300),
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(out.unwrap(), "sk-bg");
    }
}
