//! The floor of tollgate's stack: the least an HTTP/1.1 reverse proxy built on the same
//! crates (tokio, hyper) and the same threading (one current-thread runtime per core)
//! can cost per request. It authenticates nothing, records nothing and parses no
//! body: each client connection gets one upstream connection of its own, and each
//! request is forwarded with its `Authorization` replaced, the answer streamed back.
//!
//! `bench/run.sh` measures it beside nginx and tollgate (`BENCH_FLOOR=1`), so the
//! part of tollgate's cost that is the stack's own, and the part that is tollgate's,
//! can be told apart.
//!
//! ```text
//! cargo run --release --example proxy_floor -- LISTEN_ADDR UPSTREAM_ADDR
//! ```
//!
//! It prints `listening on http://ADDR` once it accepts connections.

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().unwrap_or("127.0.0.1:0".into()).parse()?;
    let upstream: SocketAddr = args
        .next()
        .ok_or("usage: proxy_floor LISTEN UPSTREAM")?
        .parse()?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());

    // One current-thread runtime per core, each serving the connections handed to it.
    let mut workers = Vec::new();
    for _ in 0..threads {
        let (tx, rx) = std_mpsc::channel::<std::net::TcpStream>();
        let (async_tx, mut async_rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                while let Some(stream) = async_rx.recv().await {
                    tokio::spawn(serve(stream, upstream));
                }
            });
            Ok::<_, std::io::Error>(())
        });
        std::thread::spawn(move || {
            for stream in rx {
                if async_tx.send(stream).is_err() {
                    break;
                }
            }
        });
        workers.push(tx);
    }

    let listener = std::net::TcpListener::bind(listen)?;
    println!("listening on http://{}", listener.local_addr()?);
    for (i, stream) in listener.incoming().enumerate() {
        let stream = stream?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        workers[i % workers.len()].send(stream)?;
    }
    Ok(())
}

/// Serves one client connection over one upstream connection of its own.
async fn serve(stream: std::net::TcpStream, upstream: SocketAddr) {
    let Ok(client) = TcpStream::from_std(stream) else {
        return;
    };
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await else {
        return;
    };
    tokio::spawn(conn);
    let sender = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
    let host = HeaderValue::from_str(&upstream.to_string()).ok();
    let key = HeaderValue::from_static("Bearer sk-floor-provider-key");
    let service = service_fn(move |mut req: Request<Incoming>| {
        let sender = sender.clone();
        let (host, key) = (host.clone(), key.clone());
        async move {
            let headers = req.headers_mut();
            headers.insert(AUTHORIZATION, key);
            if let Some(host) = host {
                headers.insert(HOST, host);
            }
            let answer = sender.lock().await.send_request(req).await;
            Ok::<_, hyper::Error>(match answer {
                Ok(res) => res.map(BodyExt::boxed),
                Err(_) => Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                    .unwrap_or_default(),
            })
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}
