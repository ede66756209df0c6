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
        Ok(make(rest.to_owned()))
    }

    /// Reads the secret now.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            Self::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))?
            }
            Self::File(path) => std::fs::read_to_string(path).map_err(|e| SecretError::File {
                path: path.clone(),
                reason: e.kind().to_string(),
            })?,
            Self::Exec(cmd) => run(cmd)?,
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret(value))
    }
}

fn run(cmd: &str) -> Result<String, SecretError> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map_err(|e| SecretError::Exec(e.kind().to_string()))?;
    if !out.status.success() {
        // stderr may echo the secret; report only the status.
        return Err(SecretError::Exec(format!("exited with {}", out.status)));
    }
    String::from_utf8(out.stdout).map_err(|_| SecretError::Exec("output is not UTF-8".into()))
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => write!(f, "env:{n}"),
            Self::File(p) => write!(f, "file:{p}"),
            // The command line itself may embed credentials: show only its program.
            Self::Exec(c) => write!(f, "exec:{} …", c.split_whitespace().next().unwrap_or("")),
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
}
