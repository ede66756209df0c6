//! The context window, checked in stage 3 (preflight): a Responses or Chat request
//! whose input plus requested output cannot fit the model's context window (from the
//! catalog) is refused with 400 `context_length_exceeded` and the numbers, before the
//! upstream sees — and bills — it.
//!
//! Cheap first: a byte-level BPE never makes more tokens than the text has bytes, and
//! the input's text is a part of the body, so when the body's length plus the output
//! asked for fits the window, nothing is counted. Only a body larger than that is
//! tokenised (the model family's real tokenizer, OpenAI's per-message recipe), and a
//! large one off the I/O thread (`offload`).
//!
//! Images, audio and files are not counted: their cost in tokens is the upstream's to
//! judge (it depends on size and detail), and their base64 data is not text, so it is
//! removed before counting rather than counted as if it were. A request near the limit
//! with large images may still be refused by the upstream. Embeddings (a limit per
//! input) are not checked here. The output asked for is `max_output_tokens` /
//! `max_completion_tokens` / `max_tokens` after the caps stage; a request that asks
//! for none is checked on its input alone.

use serde_json::Value;

use crate::catalog::Catalog;
use crate::error::{ContextRefusal, GatewayError};
use crate::offload;
use crate::preflight::{Endpoint, Preflight};

/// Members whose string values are encoded media, not text the model reads.
const MEDIA: [&str; 3] = ["file_data", "image_url", "data"];

/// Refuses a request that cannot fit its model's context window. A body that needs
/// counting is counted off the I/O thread when it is large (`offload`).
pub async fn run(
    catalog: &Catalog,
    endpoint: Endpoint,
    preflight: &Preflight,
) -> Result<(), GatewayError> {
    let param = match endpoint {
        Endpoint::Responses => "input",
        Endpoint::ChatCompletions => "messages",
        _ => return Ok(()),
    };
    let Some(model) = preflight.model.as_deref() else {
        return Ok(());
    };
    let Some(window) = catalog.get(model).and_then(|m| m.context_window) else {
        return Ok(());
    };
    let (output, output_field) = preflight
        .max_output
        .map_or((0, None), |(n, field)| (n, Some(field)));
    let body_bytes = preflight.body.len() as u64;
    if body_bytes.saturating_add(output) <= window {
        return Ok(());
    }
    let input = {
        let (model, body) = (model.to_owned(), preflight.body.clone());
        offload::run(body.len(), move || input_tokens(&model, &body)).await
    };
    if input.saturating_add(output) <= window {
        return Ok(());
    }
    Err(GatewayError::ContextLengthExceeded(Box::new(
        ContextRefusal {
            model: model.to_owned(),
            window,
            input_tokens: input,
            output_tokens: output,
            param,
            output_field,
        },
    )))
}

/// The input tokens of a body, its media left out.
fn input_tokens(model: &str, body: &[u8]) -> u64 {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    strip_media(&mut v);
    tollgate_wire::tokens::estimate_input(model, &v) as u64
}

/// Empties the base64 payloads of images, audio and files.
fn strip_media(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if MEDIA.contains(&k.as_str()) && child.is_string() {
                    *child = Value::String(String::new());
                } else {
                    strip_media(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_media),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pre(body: String, max_output: Option<u64>) -> Preflight {
        let v: Value = serde_json::from_str(&body).unwrap();
        Preflight {
            model: v["model"].as_str().map(str::to_owned),
            max_output: max_output.map(|n| (n, "max_output_tokens")),
            body: Bytes::from(body),
            ..Preflight::default()
        }
    }

    #[tokio::test]
    async fn input_plus_output_above_the_window_is_refused_with_the_numbers() {
        let c = Catalog::builtin();
        let body = r#"{"model":"gpt-4o-mini","input":"hello world"}"#.to_owned();
        assert!(
            run(&c, Endpoint::Responses, &pre(body.clone(), Some(1_000)))
                .await
                .is_ok()
        );
        let e = run(&c, Endpoint::Responses, &pre(body, Some(200_000)))
            .await
            .unwrap_err();
        let GatewayError::ContextLengthExceeded(r) = &e else {
            panic!("{e:?}");
        };
        assert_eq!(
            (r.window, r.output_tokens, r.param),
            (128_000, 200_000, "input")
        );
        assert!(
            r.input_tokens > 0 && r.input_tokens < 20,
            "{}",
            r.input_tokens
        );
        let m = e.message();
        assert!(m.contains("maximum context length is 128000 tokens"), "{m}");
        assert!(
            m.contains(&format!("{} in the input", r.input_tokens)),
            "{m}"
        );
        assert!(
            m.contains("200000 in the completion (max_output_tokens)"),
            "{m}"
        );
        assert_eq!(e.code(), Some("context_length_exceeded"));
        assert_eq!(e.param(), Some("input"));
    }

    #[tokio::test]
    async fn a_long_input_is_counted_and_media_is_not() {
        let c = Catalog::builtin();
        // ~140k tokens of text: more than gpt-4o's 128k.
        let text = "hello ".repeat(140_000);
        let chat =
            format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{text}"}}]}}"#);
        let e = run(&c, Endpoint::ChatCompletions, &pre(chat, None))
            .await
            .unwrap_err();
        let GatewayError::ContextLengthExceeded(r) = &e else {
            panic!("{e:?}");
        };
        assert_eq!(r.param, "messages");
        assert!(r.input_tokens > 128_000, "{}", r.input_tokens);
        // As many bytes of a base64 file: not text, not counted.
        let data = "QUJD".repeat(150_000);
        let file = format!(
            r#"{{"model":"gpt-4o","input":[{{"role":"user","content":[{{"type":"input_file","file_data":"{data}"}},{{"type":"input_text","text":"summarise"}}]}}]}}"#
        );
        assert!(run(&c, Endpoint::Responses, &pre(file, Some(100)))
            .await
            .is_ok());
        // Unknown models and other endpoints are not checked.
        let unknown = format!(r#"{{"model":"my-model","input":"{text}"}}"#);
        assert!(run(&c, Endpoint::Responses, &pre(unknown, None))
            .await
            .is_ok());
    }
}
