//! A helpdesk ticket classifier: structured output through `text.format` with a
//! strict JSON schema `{category: string, priority: "low"|"medium"|"high",
//! needs_human: boolean}`, parsed into a Rust struct — the second request template of
//! a typical provider guide.
//!
//! Uses `Client::from_env()`, so it runs against OpenAI or against the simulator:
//!
//! ```sh
//! cargo run --release -- mock --listen 127.0.0.1:8089 &
//! OPENAI_BASE_URL=http://127.0.0.1:8089/v1 OPENAI_API_KEY=anything \
//!     cargo run -p tollgate-client --example classify_ticket -- "I was charged twice this month"
//! ```
//!
//! `OPENAI_MODEL` picks the model (default `gpt-4o-mini`).

use serde::Deserialize;
use serde_json::json;
use tollgate_client::wire::responses::{
    CreateResponse, Input, JsonSchemaFormat, TextFormat, TextParam,
};
use tollgate_client::Client;

const DEFAULT_TICKET: &str =
    "Hi, I was charged twice for my subscription this month and I need a refund.";

/// What the model must return.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // read through Debug only
struct Classification {
    category: String,
    priority: Priority,
    needs_human: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Priority {
    Low,
    Medium,
    High,
}

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
    let client = Client::from_env()?;
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".to_owned());
    let ticket = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_TICKET.to_owned());

    let schema = json!({
        "type": "object",
        "properties": {
            "category": {"type": "string", "description": "billing, technical, account, other, …"},
            "priority": {"type": "string", "enum": ["low", "medium", "high"]},
            "needs_human": {"type": "boolean"}
        },
        "required": ["category", "priority", "needs_human"],
        "additionalProperties": false
    });
    let req = CreateResponse {
        model: Some(model),
        instructions: Some("Classify the helpdesk ticket.".to_owned()),
        input: Some(Input::Text(ticket)),
        text: Some(TextParam {
            format: Some(TextFormat::JsonSchema(JsonSchemaFormat {
                name: "ticket_classification".to_owned(),
                schema,
                strict: Some(true),
                description: None,
                extra: Default::default(),
            })),
            extra: Default::default(),
        }),
        ..Default::default()
    };
    let resp = client.responses().create(&req).await?;
    let parsed: Classification = serde_json::from_str(&resp.output_text())?;
    println!("{parsed:#?}");
    eprintln!("request_id={}", resp.request_id().unwrap_or("-"));
    Ok(())
}
