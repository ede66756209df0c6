//! HTTPS upstreams: the raw pass-through (tollgate's own HTTP/1.1 transport over
//! rustls) and the typed calls (reqwest) both verify the upstream's certificate and
//! both work through TLS. A TLS terminator on 127.0.0.1:0, with a certificate for
//! 127.0.0.1 signed by a throw-away CA made with the `openssl` command, forwards to the
//! simulator; the client trusts that CA only when told to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tollgate_client::{Client, Error};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for IP 127.0.0.1 signed by it: (ca.pem, chain, key).
fn certificates(
    dir: &Path,
) -> (
    Vec<u8>,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=tollgate test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "leaf.key", "-out", "leaf.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "leaf.pem",
        ],
    );
    let ca_pem = std::fs::read(dir.join("ca.pem")).unwrap();
    let chain = CertificateDer::pem_file_iter(dir.join("leaf.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    (ca_pem, chain, key)
}

/// Terminates TLS on 127.0.0.1:0 and forwards each connection to `upstream`.
async fn tls_front(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    upstream: std::net::SocketAddr,
) -> std::net::SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: fine.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut up = TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

fn client(base_url: &str, ca: Option<&[u8]>) -> Client {
    let mut b = Client::builder()
        .base_url(base_url)
        .api_key("sk-test-tls")
        .max_retries(0)
        .no_proxy();
    if let Some(pem) = ca {
        b = b.add_root_certificates_pem(pem.to_vec());
    }
    b.build().unwrap()
}

async fn raw_models(c: &Client) -> Result<(u16, Bytes), Error> {
    let mut headers = HeaderMap::new();
    headers.insert("accept", HeaderValue::from_static("application/json"));
    let res = c.raw(Method::GET, "/models", headers, Bytes::new()).await?;
    let status = res.status().as_u16();
    Ok((status, res.body.collect().await?))
}

#[tokio::test]
async fn https_upstreams_are_verified_and_served_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, chain, key) = certificates(dir.path());
    let sim = tollgate_simulator::spawn(Default::default()).await.unwrap();
    let front = tls_front(chain, key, sim.addr).await;
    let base_url = format!("https://127.0.0.1:{}/v1", front.port());

    // Trusting the test CA: the raw transport and the typed (reqwest) calls both work.
    let trusted = client(&base_url, Some(&ca_pem));
    let (status, body) = raw_models(&trusted).await.unwrap();
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed["object"], "list");
    let models = trusted.models().list().await.unwrap();
    assert!(!models.data.is_empty());

    // Not trusting it: the certificate is refused, nothing is served.
    let untrusted = client(&base_url, None);
    assert!(matches!(
        raw_models(&untrusted).await,
        Err(Error::Connection { .. })
    ));
    assert!(untrusted.models().list().await.is_err());

    // Not a certificate at all: the client refuses to build.
    let bad = Client::builder()
        .base_url(&base_url)
        .add_root_certificates_pem(b"not a certificate".to_vec())
        .build();
    assert!(matches!(bad, Err(Error::Config(_))));
}
