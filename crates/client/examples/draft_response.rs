//! A concise-assistant draft: one Responses call with `instructions` and
//! `max_output_tokens`, then the usage logged (input/output/total tokens, request id,
//! model) — the first request template of a typical provider guide.
//!
//! Uses `Client::from_env()`, so it runs against OpenAI or against the simulator:
//!
//! ```sh
//! cargo run --release -- mock --listen 127.0.0.1:8089 &
//! OPENAI_BASE_URL=http://127.0.0.1:8089/v1 OPENAI_API_KEY=anything \
//!     cargo run -p tollgate-client --example draft_response -- "Reply to: can we move our call?"
//! ```
//!
//! `OPENAI_MODEL` picks the model (default `gpt-4o-mini`); `RUST_LOG=tollgate_client=debug`
//! shows each attempt.

use tollgate_client::wire::responses::{CreateResponse, Input};
use tollgate_client::Client;

const DEFAULT_PROMPT: &str =
    "Draft a short reply to a customer asking whether their order can ship on Friday.";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let client = Client::from_env()?;
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".to_owned());
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_PROMPT.to_owned());

    let req = CreateResponse {
        model: Some(model),
        instructions: Some(
            "You are a concise assistant. Answer in at most three sentences.".to_owned(),
        ),
        input: Some(Input::Text(prompt)),
        max_output_tokens: Some(200),
        ..Default::default()
    };
    let resp = client.responses().create(&req).await?;

    println!("{}", resp.output_text());
    if let Some(reason) = &resp.incomplete_details {
        println!("(cut short: {})", reason.reason);
    }
    let usage = resp.usage.unwrap_or_default();
    eprintln!(
        "usage: input_tokens={} output_tokens={} total_tokens={} request_id={} model={} attempts={}",
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens,
        resp.request_id().unwrap_or("-"),
        resp.model,
        resp.attempts(),
    );
    Ok(())
}
