//! A tiny open-loop, fixed-rate HTTP/1.1 load generator (std only; built by
//! `bench/run.sh` with plain `rustc -O`, outside the Cargo workspace).
//!
//! Debian ships neither `wrk2` nor `oha`, and `wrk` only drives a fixed concurrency,
//! so this fills the gap for the "fixed rate" half of the benchmark.
//!
//! Request n is due at `start + n / rate`, whatever happened to earlier requests.
//! `--connections` keep-alive connections take the due times round-robin (connection
//! c sends requests c, c+C, c+2C, …), each from its own thread. Latency runs from the
//! moment the request was written — or from its due time, if the connection was still
//! busy with an earlier answer when it fell due (coordinated-omission correction, as
//! wrk2 does). Requests due during `--warmup` seconds are sent but not counted.
//!
//! Usage:
//!   fixed_rate --addr 127.0.0.1:8080 --path /v1/chat/completions --rate 200 \
//!     --duration 20 --warmup 3 --connections 8 --body-file body.json \
//!     [--header 'Authorization: Bearer …']...
//!
//! Prints one line of `key=value` pairs: sent, ok, errors, rate, p50_us, p90_us,
//! p99_us, p999_us, max_us.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::exit;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

struct Args {
    addr: String,
    path: String,
    rate: f64,
    duration: f64,
    warmup: f64,
    connections: usize,
    body: Vec<u8>,
    headers: Vec<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: String::new(),
        path: "/v1/chat/completions".into(),
        rate: 200.0,
        duration: 20.0,
        warmup: 3.0,
        connections: 8,
        body: Vec::new(),
        headers: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next().unwrap_or_else(|| {
                eprintln!("fixed_rate: {flag} needs a value");
                exit(2)
            })
        };
        let num = |s: String| -> f64 {
            s.parse().unwrap_or_else(|_| {
                eprintln!("fixed_rate: not a number: {s}");
                exit(2)
            })
        };
        match flag.as_str() {
            "--addr" => a.addr = val(),
            "--path" => a.path = val(),
            "--rate" => a.rate = num(val()),
            "--duration" => a.duration = num(val()),
            "--warmup" => a.warmup = num(val()),
            "--connections" => a.connections = num(val()) as usize,
            "--body-file" => {
                let p = val();
                a.body = std::fs::read(&p).unwrap_or_else(|e| {
                    eprintln!("fixed_rate: cannot read {p}: {e}");
                    exit(2)
                })
            }
            "--header" => a.headers.push(val()),
            other => {
                eprintln!("fixed_rate: unknown flag {other}");
                exit(2)
            }
        }
    }
    if a.addr.is_empty() || a.rate <= 0.0 || a.connections == 0 {
        eprintln!("fixed_rate: --addr, a positive --rate and --connections are required");
        exit(2);
    }
    a
}

/// Reads one HTTP/1.1 response; returns its status. Handles Content-Length and
/// chunked bodies (enough for the servers measured here).
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut buf = vec![0u8; size + 2];
            r.read_exact(&mut buf)?;
        }
    } else if let Some(n) = content_length {
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf)?;
    }
    Ok(status)
}

struct Result1 {
    sent: u64,
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
}

fn worker(args: Arc<Args>, request: Arc<Vec<u8>>, conn: usize, start: Instant) -> Result1 {
    let mut res = Result1 {
        sent: 0,
        ok: 0,
        errors: 0,
        latencies_us: Vec::new(),
    };
    let total = ((args.warmup + args.duration) * args.rate).round() as u64;
    let warm = (args.warmup * args.rate).round() as u64;
    let connect = || -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
        let s = TcpStream::connect(&args.addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let r = BufReader::with_capacity(64 * 1024, s.try_clone()?);
        Ok((s, r))
    };
    let mut stream = match connect() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("fixed_rate: connect {}: {e}", args.addr);
            None
        }
    };
    let mut n = conn as u64;
    while n < total {
        let due = start + Duration::from_secs_f64(n as f64 / args.rate);
        let now = Instant::now();
        let behind = now > due + Duration::from_micros(200);
        if now < due {
            thread::sleep(due - now);
        }
        if stream.is_none() {
            stream = connect().ok();
        }
        let sent_at = Instant::now();
        let t0 = if behind { due } else { sent_at };
        let outcome = match stream.as_mut() {
            Some((s, r)) => s.write_all(&request).and_then(|()| read_response(r)),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        let lat = t0.elapsed();
        res.sent += 1;
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                if n >= warm {
                    res.ok += 1;
                    res.latencies_us.push(lat.as_micros() as u64);
                }
            }
            Ok(_) => {
                if n >= warm {
                    res.errors += 1;
                }
            }
            Err(_) => {
                if n >= warm {
                    res.errors += 1;
                }
                stream = None;
            }
        }
        n += args.connections as u64;
    }
    res
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[idx.clamp(1, sorted.len()) - 1]
}

fn main() {
    let args = Arc::new(parse_args());
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        args.path,
        args.addr,
        args.body.len()
    );
    for h in &args.headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut request = req.into_bytes();
    request.extend_from_slice(&args.body);
    let request = Arc::new(request);

    let start = Instant::now() + Duration::from_millis(100);
    let handles: Vec<_> = (0..args.connections)
        .map(|c| {
            let (a, r) = (args.clone(), request.clone());
            thread::spawn(move || worker(a, r, c, start))
        })
        .collect();
    let mut all = Result1 {
        sent: 0,
        ok: 0,
        errors: 0,
        latencies_us: Vec::new(),
    };
    for h in handles {
        let r = h.join().unwrap_or_else(|_| {
            eprintln!("fixed_rate: a worker panicked");
            exit(1)
        });
        all.sent += r.sent;
        all.ok += r.ok;
        all.errors += r.errors;
        all.latencies_us.extend(r.latencies_us);
    }
    let measured_end = start.elapsed().as_secs_f64() - args.warmup;
    all.latencies_us.sort_unstable();
    let l = &all.latencies_us;
    println!(
        "sent={} ok={} errors={} rate={:.1} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        all.sent,
        all.ok,
        all.errors,
        (all.ok + all.errors) as f64 / measured_end.max(1e-9),
        pct(l, 50.0),
        pct(l, 90.0),
        pct(l, 99.0),
        pct(l, 99.9),
        l.last().copied().unwrap_or(0)
    );
}
